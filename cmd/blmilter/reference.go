package main

// configReference is the configuration reference "blmilter help config" prints.
func configReference() string { return "The configuration reference is docs/config.md.\n" }
