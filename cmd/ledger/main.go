// Command ledger runs the TokenLedger server (`ledger serve`) and is the admin
// CLI for it (`ledger token ...`). Client commands read LEDGER_URL and
// LEDGER_API_TOKEN.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tokenledger/tokenledger/httpapi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// Exit codes scripts can rely on.
const (
	exitOK      = 0
	exitFailed  = 1 // the ledger said no, or verify found the token not active
	exitUsage   = 2
	exitNoReach = 3 // the ledger could not be reached
)

// exitError carries an exit code and a message already meant for a person.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// run is the whole program, minus the process: tests call it directly.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	var started bool // set once a command's own work begins
	root := newRootCmd(stdin, stdout, stderr, getenv, &started)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var (
		ee    *exitError
		prob  *httpapi.Problem
		unrea *httpapi.UnreachableError
	)
	switch {
	case errors.As(err, &ee):
		if ee.msg != "" {
			fmt.Fprintln(stderr, ee.msg)
		}
		return ee.code
	case errors.As(err, &prob):
		if len(prob.Errors) == 0 {
			fmt.Fprintf(stderr, "error: %s (HTTP %d)\n", prob.Detail, prob.Status)
		} else {
			fmt.Fprintf(stderr, "error: %s (HTTP %d)\n", strings.ToLower(prob.Title), prob.Status)
		}
		for _, fe := range prob.Errors {
			fmt.Fprintf(stderr, "  %s: %s\n", fe.Field, fe.Rule)
		}
		return exitFailed
	case errors.As(err, &unrea):
		fmt.Fprintf(stderr, "error: %v\n", err)
		return exitNoReach
	}
	var usage usageError
	if errors.As(err, &usage) || !started {
		// From the command line itself: unknown commands, missing or extra
		// arguments, bad or missing flags (cobra checks those before a
		// command runs).
		fmt.Fprintf(stderr, "error: %v\nRun 'ledger --help' for usage.\n", err)
		return exitUsage
	}
	fmt.Fprintf(stderr, "error: %v\n", err)
	return exitFailed
}

// usageError marks errors about the command line itself.
type usageError struct{ error }

// groupCmd is a command that only holds subcommands: run bare, it shows its
// help; with an unknown subcommand it is a usage error (cobra would otherwise
// print the help and exit 0).
func groupCmd(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())}
			}
			return cmd.Help()
		},
	}
}

func newRootCmd(stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string, started *bool) *cobra.Command {
	root := groupCmd("ledger", "TokenLedger: an event-sourced ledger of API tokens on NATS JetStream")
	root.SilenceUsage, root.SilenceErrors = true, true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newServeCmd(stdout, stderr, started))
	root.AddCommand(newBootstrapCmd(stdout, stderr, started))
	root.AddCommand(newTokenCmd(stdin, stdout, stderr, getenv, started))
	root.AddCommand(newRolesCmd(stdout, getenv, started))
	root.AddCommand(newAuditCmd(stdout, stderr, getenv, started))
	root.AddCommand(newEventsCmd(stdout, stderr, getenv, started))
	root.AddCommand(newBenchCmd(stdout, stderr, started))
	root.AddCommand(newNATSCmd(stdout, getenv, started))
	return root
}
