"""Bad input, faults, contention and real commits: nothing acknowledged is lost."""
