package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenledger/tokenledger/httpapi"
)

// clientEnv builds the API client from LEDGER_URL and LEDGER_API_TOKEN.
func clientEnv(getenv func(string) string) (*httpapi.Client, error) {
	url := getenv("LEDGER_URL")
	if url == "" {
		url = "http://127.0.0.1:8080"
	}
	token := strings.TrimSpace(getenv("LEDGER_API_TOKEN"))
	if token == "" {
		return nil, usageError{errors.New("LEDGER_API_TOKEN is not set: export it (the first token: after the first `ledger serve`, in <data>/bootstrap-token; with --nats-url, what `ledger bootstrap` wrote)")}
	}
	return httpapi.NewClient(url, token), nil
}

type output struct{ format string }

func (o *output) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&o.format, "output", "o", "text", "output format: text or json")
}

func (o *output) check() error {
	if o.format != "text" && o.format != "json" {
		return usageError{fmt.Errorf("-o %s: must be text or json", o.format)}
	}
	return nil
}

func (o *output) json() bool { return o.format == "json" }

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// clientRunnerFor gives each client command a fresh client from the
// environment when it runs, and marks the command as started.
func clientRunnerFor(getenv func(string) string, started *bool) clientRunner {
	return func(f func(cmd *cobra.Command, args []string, c *httpapi.Client) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			*started = true
			c, err := clientEnv(getenv)
			if err != nil {
				return err
			}
			return f(cmd, args, c)
		}
	}
}

func newTokenCmd(stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string, started *bool) *cobra.Command {
	cmd := groupCmd("token", "Create, inspect and manage API tokens")
	withClient := clientRunnerFor(getenv, started)
	cmd.AddCommand(
		newCreateCmd(stdout, withClient),
		newListCmd(stdout, withClient),
		newShowCmd(stdout, withClient),
		newHistoryCmd(stdout, withClient),
		newUpdateCmd(stdout, withClient),
		newRotateCmd(stdout, withClient),
		newAssignCmd(stdout, withClient),
		newUnassignCmd(stdout, withClient),
		newDeleteCmd(stdin, stdout, stderr, withClient),
		newVerifyCmd(stdin, stdout, withClient),
	)
	return cmd
}

type clientRunner func(f func(cmd *cobra.Command, args []string, c *httpapi.Client) error) func(*cobra.Command, []string) error

func exactlyOneID(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usageError{fmt.Errorf("%s takes exactly one token id, got %d arguments", cmd.CommandPath(), len(args))}
	}
	return nil
}

func newCreateCmd(stdout io.Writer, withClient clientRunner) *cobra.Command {
	var (
		req   httpapi.CreateRequest
		days  int
		key   string
		clean bool
		out   output
	)
	cmd := &cobra.Command{
		Use:   "create --scope organization|workspace|deployment --name N [flags]",
		Short: "Create a token; its secret is shown once",
		Args:  cobra.NoArgs,
		RunE: withClient(func(cmd *cobra.Command, _ []string, c *httpapi.Client) error {
			if err := out.check(); err != nil {
				return err
			}
			if cmd.Flags().Changed("expiration") {
				req.ExpirationDays = &days
			}
			t, err := c.CreateToken(cmd.Context(), req, key)
			if err != nil {
				return err
			}
			return printIssued(stdout, t, clean, out)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&req.Scope, "scope", "", "organization, workspace or deployment (required)")
	f.StringVar(&req.Name, "name", "", "token name, 1-100 characters (required)")
	f.StringVar(&req.Description, "description", "", "description, at most 1000 characters")
	f.StringVar(&req.Role, "role", "", "role; default: the scope's least-privileged role")
	f.StringVar(&req.WorkspaceID, "workspace", "", "workspace id (workspace and deployment tokens)")
	f.StringVar(&req.DeploymentID, "deployment", "", "deployment id (deployment tokens)")
	f.IntVar(&days, "expiration", 0, "days until the token expires, 1-365; without it the token never expires")
	f.StringVar(&key, "idempotency-key", "", "makes a retried create safe: the same key creates one token")
	f.BoolVarP(&clean, "clean-output", "c", false, "print only the secret")
	out.register(cmd)
	return cmd
}

// printIssued prints a create or rotate answer, the one time its secret is
// shown.
func printIssued(w io.Writer, t httpapi.Token, clean bool, out output) error {
	if clean {
		if t.Secret == "" {
			return &exitError{code: exitFailed, msg: "error: no secret in the answer: this retried command was already done (idempotency key), and a secret is shown only once; rotate the token for a new one"}
		}
		fmt.Fprintln(w, t.Secret)
		return nil
	}
	if out.json() {
		return printJSON(w, t)
	}
	printToken(w, t)
	switch {
	case t.Secret != "":
		fmt.Fprintf(w, "\nToken: %s\n\nCopy it now and store it safely: it cannot be shown again.\n", t.Secret)
	case t.IdempotentReplay:
		fmt.Fprintln(w, "\nThis command was already done under the same idempotency key; its secret was shown then and cannot be shown again. Rotate the token for a new one.")
	}
	return nil
}

func printToken(w io.Writer, t httpapi.Token) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("ID", t.ID)
	row("Name", t.Name)
	if t.Description != "" {
		row("Description", t.Description)
	}
	row("Organization", t.OrganizationID)
	row("Scope", string(t.Scope))
	row("Role", string(t.Role))
	if t.WorkspaceID != nil {
		row("Workspace", *t.WorkspaceID)
	}
	if t.DeploymentID != nil {
		row("Deployment", *t.DeploymentID)
	}
	if len(t.WorkspaceRoles) > 0 {
		row("Workspace roles", formatRoles(t.WorkspaceRoles))
	}
	for i, g := range t.Roles {
		grant := fmt.Sprintf("%s in %s %s", g.Role, g.Level, g.ID)
		if i == 0 {
			row("Roles", grant)
		} else {
			fmt.Fprintf(tw, "\t%s\n", grant)
		}
	}
	row("Status", string(t.Status))
	row("Expires", timeOr(t.ExpiresAt, "never"))
	row("Created", t.CreatedAt.Format(time.RFC3339))
	row("Updated", t.UpdatedAt.Format(time.RFC3339))
	row("Rotated", timeOr(t.RotatedAt, "never"))
	row("Last used", timeOr(t.LastUsedAt, "none recorded"))
	row("Version", fmt.Sprint(t.Version))
	row("Fingerprint", t.Fingerprint)
	tw.Flush()
}

func formatRoles(roles map[string]string) string {
	ws := make([]string, 0, len(roles))
	for w := range roles {
		ws = append(ws, w)
	}
	sort.Strings(ws)
	parts := make([]string, len(ws))
	for i, w := range ws {
		parts[i] = w + "=" + roles[w]
	}
	return strings.Join(parts, ", ")
}

func timeOr(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return t.Format(time.RFC3339)
}

func orDash(s *string) string {
	if s == nil || *s == "" {
		return "-"
	}
	return *s
}

func newListCmd(stdout io.Writer, withClient clientRunner) *cobra.Command {
	var (
		q   httpapi.TokenQuery
		out output
	)
	cmd := &cobra.Command{
		Use:   "list [--scope S] [--workspace W] [--deployment D] [--role R] [--status S]",
		Short: "List the organization's tokens, all or those matching every filter given",
		Args:  cobra.NoArgs,
		RunE: withClient(func(cmd *cobra.Command, _ []string, c *httpapi.Client) error {
			if err := out.check(); err != nil {
				return err
			}
			if err := nonEmpty(cmd, "scope", "workspace", "deployment", "role", "status"); err != nil {
				return err
			}
			l, err := c.ListTokensWhere(cmd.Context(), q)
			if err != nil {
				return err
			}
			if out.json() {
				return printJSON(stdout, l.Tokens)
			}
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tSCOPE\tROLE\tWORKSPACE\tDEPLOYMENT\tSTATUS\tEXPIRES\tLAST USED")
			for _, t := range l.Tokens {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Scope, t.Role,
					orDash(t.WorkspaceID), orDash(t.DeploymentID), t.Status, timeOr(t.ExpiresAt, "never"), timeOr(t.LastUsedAt, "-"))
			}
			return tw.Flush()
		}),
	}
	f := cmd.Flags()
	f.StringVar(&q.Scope, "scope", "", "only tokens of this scope: organization, workspace or deployment")
	f.StringVar(&q.WorkspaceID, "workspace", "", "only tokens with a role in this workspace: its workspace tokens, its deployments' tokens, organization tokens assigned to it")
	f.StringVar(&q.DeploymentID, "deployment", "", "only the deployment tokens of this deployment")
	f.StringVar(&q.Role, "role", "", "only tokens with this role (with --workspace: the role held in that workspace)")
	f.StringVar(&q.Status, "status", "", "only tokens with this status now: active, expired or deleted")
	out.register(cmd)
	return cmd
}

// nonEmpty refuses a filter flag given an empty value: a script whose
// variable is unset must not get an unfiltered answer.
func nonEmpty(cmd *cobra.Command, flags ...string) error {
	for _, name := range flags {
		if f := cmd.Flags().Lookup(name); f != nil && f.Changed && strings.TrimSpace(f.Value.String()) == "" {
			return usageError{fmt.Errorf("--%s: must not be empty; leave the flag out to not filter", name)}
		}
	}
	return nil
}

func newShowCmd(stdout io.Writer, withClient clientRunner) *cobra.Command {
	var (
		at  string
		out output
	)
	cmd := &cobra.Command{
		Use:   "show ID [--at RFC3339]",
		Short: "Show one token, now or as it was at a time",
		Args:  exactlyOneID,
		RunE: withClient(func(cmd *cobra.Command, args []string, c *httpapi.Client) error {
			if err := out.check(); err != nil {
				return err
			}
			if !cmd.Flags().Changed("at") {
				t, err := c.GetToken(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return printOne(stdout, t, out)
			}
			t, err := c.GetTokenAt(cmd.Context(), args[0], at)
			if err != nil {
				return err
			}
			if out.json() {
				return printJSON(stdout, t)
			}
			fmt.Fprintf(stdout, "As of %s (stream sequence %d):\n", at, t.Sequence)
			printToken(stdout, t)
			return nil
		}),
	}
	cmd.Flags().StringVar(&at, "at", "", "show the token as it was at this time (RFC 3339, e.g. 2026-01-02T15:04:05Z)")
	out.register(cmd)
	return cmd
}

func newHistoryCmd(stdout io.Writer, withClient clientRunner) *cobra.Command {
	var out output
	cmd := &cobra.Command{
		Use:   "history ID",
		Short: "Show a token's events, oldest first",
		Args:  exactlyOneID,
		RunE: withClient(func(cmd *cobra.Command, args []string, c *httpapi.Client) error {
			if err := out.check(); err != nil {
				return err
			}
			h, err := c.TokenHistory(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if out.json() {
				return printJSON(stdout, h.Events)
			}
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tEVENT\tACTOR\tCHANGES")
			for _, e := range h.Events {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", e.Sequence, e.OccurredAt.Format(time.RFC3339), e.EventType, e.ActorTokenID, changes(e))
			}
			return tw.Flush()
		}),
	}
	out.register(cmd)
	return cmd
}

func printOne(w io.Writer, t httpapi.Token, out output) error {
	if out.json() {
		return printJSON(w, t)
	}
	printToken(w, t)
	return nil
}

func newUpdateCmd(stdout io.Writer, withClient clientRunner) *cobra.Command {
	var (
		name, desc, role string
		out              output
	)
	cmd := &cobra.Command{
		Use:   "update ID [--name N] [--description D] [--role R]",
		Short: "Change a token's name, description or role",
		Args:  exactlyOneID,
		RunE: withClient(func(cmd *cobra.Command, args []string, c *httpapi.Client) error {
			if err := out.check(); err != nil {
				return err
			}
			var req httpapi.UpdateRequest
			if cmd.Flags().Changed("name") {
				req.Name = &name
			}
			if cmd.Flags().Changed("description") {
				req.Description = &desc
			}
			if cmd.Flags().Changed("role") {
				req.Role = &role
			}
			t, err := c.UpdateToken(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return printOne(stdout, t, out)
		}),
	}
	cmd.Flags().StringVar(&name, "name", "", "new name")
	cmd.Flags().StringVar(&desc, "description", "", "new description (\"\" clears it)")
	cmd.Flags().StringVar(&role, "role", "", "new role")
	out.register(cmd)
	return cmd
}

func newRotateCmd(stdout io.Writer, withClient clientRunner) *cobra.Command {
	var (
		clean bool
		out   output
	)
	cmd := &cobra.Command{
		Use:   "rotate ID",
		Short: "Give a token a new secret; the old one stops working at once",
		Args:  exactlyOneID,
		RunE: withClient(func(cmd *cobra.Command, args []string, c *httpapi.Client) error {
			if err := out.check(); err != nil {
				return err
			}
			t, err := c.RotateToken(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printIssued(stdout, t, clean, out)
		}),
	}
	cmd.Flags().BoolVarP(&clean, "clean-output", "c", false, "print only the secret")
	out.register(cmd)
	return cmd
}

func newAssignCmd(stdout io.Writer, withClient clientRunner) *cobra.Command {
	var (
		ws, role string
		out      output
	)
	cmd := &cobra.Command{
		Use:   "assign ID --workspace W --role R",
		Short: "Give an organization token a role in a workspace (again: change it)",
		Args:  exactlyOneID,
		RunE: withClient(func(cmd *cobra.Command, args []string, c *httpapi.Client) error {
			if err := out.check(); err != nil {
				return err
			}
			t, err := c.AssignToken(cmd.Context(), args[0], ws, role)
			if err != nil {
				return err
			}
			return printOne(stdout, t, out)
		}),
	}
	cmd.Flags().StringVar(&ws, "workspace", "", "workspace id (required)")
	cmd.Flags().StringVar(&role, "role", "", "workspace role (required)")
	_ = cmd.MarkFlagRequired("workspace")
	_ = cmd.MarkFlagRequired("role")
	out.register(cmd)
	return cmd
}

func newUnassignCmd(stdout io.Writer, withClient clientRunner) *cobra.Command {
	var (
		ws  string
		out output
	)
	cmd := &cobra.Command{
		Use:   "unassign ID --workspace W",
		Short: "Remove an organization token from a workspace",
		Args:  exactlyOneID,
		RunE: withClient(func(cmd *cobra.Command, args []string, c *httpapi.Client) error {
			if err := out.check(); err != nil {
				return err
			}
			t, err := c.UnassignToken(cmd.Context(), args[0], ws)
			if err != nil {
				return err
			}
			return printOne(stdout, t, out)
		}),
	}
	cmd.Flags().StringVar(&ws, "workspace", "", "workspace id (required)")
	_ = cmd.MarkFlagRequired("workspace")
	out.register(cmd)
	return cmd
}

func newDeleteCmd(stdin io.Reader, stdout, stderr io.Writer, withClient clientRunner) *cobra.Command {
	var confirm string
	cmd := &cobra.Command{
		Use:   "delete ID [--confirm Delete]",
		Short: "Delete a token for good (its history stays); asks you to type Delete",
		Args:  exactlyOneID,
		RunE: withClient(func(cmd *cobra.Command, args []string, c *httpapi.Client) error {
			if !cmd.Flags().Changed("confirm") {
				fmt.Fprintf(stderr, "Deleting token %s cannot be undone; anything using it stops working.\nType Delete to confirm: ", args[0])
				line, _ := bufio.NewReader(stdin).ReadString('\n')
				confirm = strings.TrimSpace(line)
			}
			if confirm != "Delete" {
				return &exitError{code: exitFailed, msg: "not deleted: confirmation must be exactly \"Delete\""}
			}
			t, err := c.DeleteToken(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "deleted token %s (%s)\n", t.ID, t.Name)
			return nil
		}),
	}
	cmd.Flags().StringVar(&confirm, "confirm", "", "skip the prompt: must be exactly Delete")
	return cmd
}

func newVerifyCmd(stdin io.Reader, stdout io.Writer, withClient clientRunner) *cobra.Command {
	var out output
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check a secret read from stdin: exit 0 if active, 1 with the reason if not",
		Args:  cobra.NoArgs,
		RunE: withClient(func(cmd *cobra.Command, _ []string, c *httpapi.Client) error {
			if err := out.check(); err != nil {
				return err
			}
			line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			v, err := c.Verify(cmd.Context(), strings.TrimSpace(line))
			if err != nil {
				return err
			}
			if out.json() {
				if err := printJSON(stdout, v); err != nil {
					return err
				}
			} else if v.Valid {
				fmt.Fprintf(stdout, "active: %s scope=%s role=%s", v.ID, v.Scope, v.Role)
				if len(v.WorkspaceRoles) > 0 {
					fmt.Fprintf(stdout, " workspace_roles=%s", formatRoles(v.WorkspaceRoles))
				}
				fmt.Fprintf(stdout, " fingerprint=%s\n", v.Fingerprint)
			}
			if !v.Valid {
				msg := "not valid: " + v.Reason
				if out.json() {
					msg = ""
				}
				return &exitError{code: exitFailed, msg: msg}
			}
			return nil
		}),
	}
	out.register(cmd)
	return cmd
}

// changes sums up what an event did, for a person (see httpapi.Changes).
func changes(e httpapi.HistoryEvent) string { return httpapi.Changes(e) }

func clipText(s string) string {
	if r := []rune(s); len(r) > 40 {
		return string(r[:40]) + "…"
	}
	return s
}
