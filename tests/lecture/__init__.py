"""The lecture itself: its Part 6 examples run as written, and its map checked."""
