"""toolrl: a sweep runner for multi-turn tool-use RL and the supervisory signals that fix its collapse."""

__version__ = "0.1.0"
