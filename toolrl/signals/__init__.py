"""The built-in supervisory signals, one module each. A module here that defines a
`toolrl.plugins.Signal` subclass with a `name` is a signal; other packages add theirs through the
`toolrl.signals` entry-point group (see docs/extending.md)."""
