"""HTTP routes: they say WHAT to do and leave HOW to the repositories."""
