package milter

import (
	"io"
	"log"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// go-milter reports every session that ends without QUIT (as the tests'
	// closed and malformed ones do) through the standard logger; the tests
	// check behaviour through the client instead.
	log.SetOutput(io.Discard)
	os.Exit(m.Run())
}
