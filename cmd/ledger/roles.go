package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tokenledger/tokenledger/httpapi"
)

// newRolesCmd is `ledger roles`: who can act in a workspace or a deployment.
func newRolesCmd(stdout io.Writer, getenv func(string) string, started *bool) *cobra.Command {
	var (
		ws, dep string
		out     output
	)
	withClient := clientRunnerFor(getenv, started)
	cmd := &cobra.Command{
		Use:   "roles --workspace W | --deployment D",
		Short: "List the tokens that can act now in a workspace or a deployment, with their role there and how they hold it",
		Args:  cobra.NoArgs,
		RunE: withClient(func(cmd *cobra.Command, _ []string, c *httpapi.Client) error {
			if err := out.check(); err != nil {
				return err
			}
			if err := nonEmpty(cmd, "workspace", "deployment"); err != nil {
				return err
			}
			l, err := c.Roles(cmd.Context(), ws, dep)
			if err != nil {
				return err
			}
			if out.json() {
				return printJSON(stdout, l.Holdings)
			}
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "TOKEN ID\tNAME\tROLE\tHOW")
			for _, h := range l.Holdings {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", h.TokenID, h.Name, h.Role, h.How)
			}
			return tw.Flush()
		}),
	}
	f := cmd.Flags()
	f.StringVar(&ws, "workspace", "", "the workspace: its workspace tokens, its deployments' tokens and the organization tokens assigned to it")
	f.StringVar(&dep, "deployment", "", "the deployment: its deployment tokens")
	cmd.MarkFlagsOneRequired("workspace", "deployment")
	cmd.MarkFlagsMutuallyExclusive("workspace", "deployment")
	out.register(cmd)
	return cmd
}
