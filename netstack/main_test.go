package netstack

import (
	"io"
	"log/slog"
	"os"
)

func init() {
	// Keep test output readable unless GWLBPROXY_TEST_LOG asks for the logs.
	if os.Getenv("GWLBPROXY_TEST_LOG") == "" {
		slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	}
}
