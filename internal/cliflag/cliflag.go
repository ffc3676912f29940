// Package cliflag parses the command lines of gwlbproxy's commands.
package cliflag

import (
	"errors"
	"flag"
	"io"
)

// Parse parses args into fs as fs.Parse does, but prints nothing on an
// error: the flag package prints the error and then the whole usage
// (every flag, over a hundred lines for gwlbproxy) on each, and the
// commands print the error again, so one mistaken value put its line
// between two copies of the usage, far from the one `<command>: <error>`
// line the commands promise (in a journal, the real error buried). The
// usage is printed, to fs's output as before, only when asked for (-h,
// -help): then the error is flag.ErrHelp, which the commands take as no
// error.
func Parse(fs *flag.FlagSet, args []string) error {
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.SetOutput(out)
	fs.Usage = usage
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
	}
	return err
}
