// Package flagusage prints command-line flags the way poolplane's commands
// show them in their help: "--name ARG", the usage on the next line, and
// the default when it is not the zero value.
package flagusage

import (
	"flag"
	"fmt"
	"io"
	"slices"
)

// Print writes one flag's help.
func Print(w io.Writer, f *flag.Flag) {
	name, usage := flag.UnquoteUsage(f)
	dash := "--"
	if len(f.Name) == 1 {
		dash = "-"
	}
	line := "  " + dash + f.Name
	if name != "" {
		line += " " + name
	}
	_, _ = fmt.Fprintf(w, "%s\n    \t%s", line, usage)
	if !slices.Contains([]string{"", "false", "0", "0s"}, f.DefValue) {
		_, _ = fmt.Fprintf(w, " (default %s)", f.DefValue)
	}
	_, _ = fmt.Fprintln(w)
}
