"""The README and the docs pages: their examples run in order, their links lead somewhere, the
problem types they list are the code's."""
