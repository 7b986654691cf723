package main

import "github.com/blmilter/blmilter/docs"

// configReference is the configuration reference "blmilter help config"
// prints: docs/config.md, generated from the config package.
func configReference() string { return docs.ConfigReference }
