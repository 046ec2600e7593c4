"""What the service publishes for other programs to read: the calendar feeds (ics)."""
