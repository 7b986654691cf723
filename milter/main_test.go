package milter

import (
	"io"
	"log"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// go-milter's own server, the no-op the benchmark compares against,
	// reports every session that ends without QUIT through the standard
	// logger; the benchmark does not need those lines.
	log.SetOutput(io.Discard)
	os.Exit(m.Run())
}
