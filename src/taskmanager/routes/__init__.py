"""HTTP routes, the front desk: they say WHAT to do and leave HOW to the repositories."""
