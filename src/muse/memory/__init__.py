"""Memory toolkit: parameter accounting (and, with the memory issue, measured peaks)."""
