package certs

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestWarnExpiry: a CA more than 30 days from its end logs nothing; within
// them a warning; past its end an error. The appliance repeats it daily.
func TestWarnExpiry(t *testing.T) {
	now := time.Now()
	ca, err := generate("expiring CA", now, 10*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	old := slog.Default()
	t.Cleanup(func() { slog.SetDefault(old) })
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	for _, c := range []struct {
		at   time.Time
		want string // the level logged, "" for nothing
	}{
		{now.Add(-30 * 24 * time.Hour), ""},
		{now, "level=WARN msg=\"CA expires soon"},
		{now.Add(11 * 24 * time.Hour), "level=ERROR msg=\"CA has expired"},
	} {
		logs.Reset()
		if got := ca.WarnExpiry(c.at, "source", "test"); got != (c.want != "") || !strings.Contains(logs.String(), c.want) ||
			(c.want != "" && !strings.Contains(logs.String(), "source=test")) {
			t.Errorf("at %v: WarnExpiry %v, logged %q; want %q", c.at, got, logs.String(), c.want)
		}
	}
}
