package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// The workloads of `ledger bench`, in the order they run and are printed.
var benchWorkloads = []string{"append", "http", "verify", "rebuild", "export", "notify"}

type benchOptions struct {
	events      int
	concurrency int
	only        []string
	cpuProfile  string
	out         output
}

func newBenchCmd(stdout, stderr io.Writer, started *bool) *cobra.Command {
	var o benchOptions
	cmd := &cobra.Command{
		Use:   "bench [--events N] [--concurrency C] [--only WORKLOAD]... [-o json]",
		Short: "Measure the ledger against the raw NATS JetStream under it, workload by workload, on a fresh embedded ledger",
		Long: `Measure the ledger against the raw NATS JetStream under it. A fresh ledger
(embedded NATS JetStream on file storage in a temporary directory, removed
afterwards; the HTTP API on a loopback port) runs each workload after a
warm-up, and one row per figure gives the ledger's number, a baseline
measured in the same run, and their ratio (ledger / baseline: for rates
higher is better, for latencies and memory lower is). Ledger and baseline
alternate over three rounds and the medians are compared, so the ratios
hold on a noisy machine.

Workloads: ` + strings.Join(benchWorkloads, ", ") + `. --events sizes the stream
that rebuild and export read (and the in-process verify's tokens: one per
five events); the defaults finish in under a minute on 2 cores, --events
1000000 is the full run. Progress goes to stderr. See docs/benchmarks.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.out.check(); err != nil {
				return err
			}
			if err := o.validate(); err != nil {
				return err
			}
			*started = true
			if o.cpuProfile != "" {
				// The profile that finds a slow path is taken on the very
				// run that shows it.
				f, err := os.Create(o.cpuProfile)
				if err != nil {
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				defer pprof.StopCPUProfile()
			}
			rep, err := runBench(cmd.Context(), o, stderr)
			if err != nil {
				return err
			}
			if o.out.json() {
				return printJSON(stdout, rep)
			}
			return rep.printText(stdout)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.events, "events", 20_000, "events in the stream that rebuild and export read (1000000: the full run)")
	f.IntVar(&o.concurrency, "concurrency", 64, "concurrent commands in the append workload's second row")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file (go tool pprof reads it)")
	f.StringSliceVar(&o.only, "only", nil, "run only this workload ("+strings.Join(benchWorkloads, ", ")+"); repeat for several")
	o.out.register(cmd)
	return cmd
}

// minBenchEvents keeps every workload's sample large enough to mean something.
const minBenchEvents = 100

func (o *benchOptions) validate() error {
	if o.events < minBenchEvents {
		return usageError{fmt.Errorf("--events %d: must be at least %d", o.events, minBenchEvents)}
	}
	if o.concurrency < 1 || o.concurrency > 4096 {
		return usageError{fmt.Errorf("--concurrency %d: must be 1-4096", o.concurrency)}
	}
	for _, w := range o.only {
		if !slices.Contains(benchWorkloads, w) {
			return usageError{fmt.Errorf("--only %q: unknown workload; valid: %s", w, strings.Join(benchWorkloads, ", "))}
		}
	}
	return nil
}

func (o *benchOptions) runs(workload string) bool {
	return len(o.only) == 0 || slices.Contains(o.only, workload)
}

// benchReport is what `ledger bench -o json` prints.
type benchReport struct {
	GoVersion   string     `json:"go_version"`
	CPU         string     `json:"cpu"`
	Cores       int        `json:"cores"`
	Events      int        `json:"events"`
	Concurrency int        `json:"concurrency"`
	Rows        []benchRow `json:"rows"`
}

// benchRow is one figure. Ratio is Ledger / Baseline whatever the unit;
// Target is empty and Met null where the issue set no target.
type benchRow struct {
	Workload string  `json:"workload"`
	Metric   string  `json:"metric"`
	Ledger   float64 `json:"ledger"`
	Baseline float64 `json:"baseline"`
	Ratio    float64 `json:"ratio"`
	Unit     string  `json:"unit"`
	Target   string  `json:"target"`
	Met      *bool   `json:"met"`
}

// benchTarget judges a row: on its ratio, or on the ledger's figure.
type benchTarget struct {
	text    string
	onRatio bool
	atLeast bool // otherwise: below
	bound   float64
}

func ratioAtLeast(x float64) benchTarget {
	return benchTarget{text: fmt.Sprintf(">= %gx", x), onRatio: true, atLeast: true, bound: x}
}

func valueAtLeast(x float64, text string) benchTarget {
	return benchTarget{text: text, atLeast: true, bound: x}
}

func valueBelow(x float64, text string) benchTarget {
	return benchTarget{text: text, bound: x}
}

// row makes a row; a nil target leaves it unjudged.
func row(workload, metric, unit string, ledger, baseline float64, t *benchTarget) benchRow {
	r := benchRow{Workload: workload, Metric: metric, Unit: unit, Ledger: ledger, Baseline: baseline}
	if baseline > 0 {
		r.Ratio = ledger / baseline
	}
	if t != nil {
		v := ledger
		if t.onRatio {
			v = r.Ratio
		}
		met := v < t.bound
		if t.atLeast {
			met = v >= t.bound
		}
		r.Target, r.Met = t.text, &met
	}
	return r
}

func ptr[T any](v T) *T { return &v }

// runBench starts the ledger, runs the chosen workloads and takes it all
// down again, the temporary directory included, whatever happened.
func runBench(ctx context.Context, o benchOptions, progress io.Writer) (*benchReport, error) {
	rep := &benchReport{GoVersion: runtime.Version(), CPU: cpuModel(), Cores: runtime.NumCPU(), Events: o.events, Concurrency: o.concurrency, Rows: []benchRow{}}
	dir, err := os.MkdirTemp("", "ledger-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	say := func(format string, args ...any) { fmt.Fprintf(progress, "bench: "+format+"\n", args...) }
	say("%s, %s, %d cores; %d events, concurrency %d; data in %s", rep.GoVersion, rep.CPU, rep.Cores, o.events, o.concurrency, dir)
	r, err := startBenchRig(ctx, dir, progress)
	if err != nil {
		return nil, fmt.Errorf("start the ledger: %w", err)
	}
	defer r.close() // before the directory goes: the server lets go of its files first
	p := benchParams{events: o.events, concurrency: o.concurrency, round: roundLength(o.events), say: say}
	type workload struct {
		name string
		run  func(context.Context, benchParams) ([]benchRow, error)
	}
	for _, w := range []workload{
		{"append", r.benchAppend}, {"http", r.benchHTTP}, {"verify", r.benchVerify},
		{"rebuild", r.benchRebuild}, {"export", r.benchExport}, {"notify", r.benchNotify},
	} {
		if !o.runs(w.name) {
			continue
		}
		say("%s", w.name)
		start := time.Now()
		rows, err := w.run(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w.name, err)
		}
		say("%s done in %.1fs", w.name, time.Since(start).Seconds())
		rep.Rows = append(rep.Rows, rows...)
	}
	return rep, nil
}

// benchParams is what every workload is given.
type benchParams struct {
	events      int
	concurrency int
	// round is how long one measured round of a timed workload lasts.
	round time.Duration
	say   func(format string, args ...any)
}

// roundLength grows with --events so the full run's rounds average more,
// and stays short enough for the defaults (and the smoke test) to be quick.
func roundLength(events int) time.Duration {
	d := time.Duration(events) * 25 * time.Microsecond
	return min(max(d, 100*time.Millisecond), 1500*time.Millisecond)
}

// rounds is how many times ledger and baseline alternate; their medians
// are compared.
const rounds = 3

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// cpuModel is /proc/cpuinfo's model name, or the architecture where there
// is none (not Linux, or an ARM kernel that does not say).
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if ok && strings.TrimSpace(k) == "model name" && strings.TrimSpace(v) != "" {
				return strings.TrimSpace(v)
			}
		}
	}
	return runtime.GOARCH
}

func (rep *benchReport) printText(w io.Writer) error {
	fmt.Fprintf(w, "go          %s (%s/%s)\n", rep.GoVersion, runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(w, "cpu         %s, %d cores\n", rep.CPU, rep.Cores)
	fmt.Fprintf(w, "events      %s\n", thousands(float64(rep.Events)))
	fmt.Fprintf(w, "concurrency %d\n\n", rep.Concurrency)
	cells := [][]string{{"WORKLOAD", "METRIC", "LEDGER", "BASELINE", "RATIO", "UNIT", "TARGET", "MET"}}
	for _, r := range rep.Rows {
		met := ""
		if r.Met != nil {
			met = "met"
			if !*r.Met {
				met = "MISSED"
			}
		}
		cells = append(cells, []string{r.Workload, r.Metric, figure(r.Ledger, r.Unit), figure(r.Baseline, r.Unit),
			strconv.FormatFloat(r.Ratio, 'f', 2, 64), r.Unit, r.Target, met})
	}
	printTable(w, cells, 2, 3, 4)
	_, err := fmt.Fprint(w, "\n"+benchBaselines)
	return err
}

// printTable prints cells in columns two spaces apart, the columns named
// by right aligned to the right (numbers), the others to the left.
func printTable(w io.Writer, cells [][]string, right ...int) {
	widths := make([]int, len(cells[0]))
	for _, row := range cells {
		for i, c := range row {
			widths[i] = max(widths[i], len(c))
		}
	}
	for _, row := range cells {
		var b strings.Builder
		for i, c := range row {
			pad := strings.Repeat(" ", widths[i]-len(c))
			if slices.Contains(right, i) {
				b.WriteString(pad + c)
			} else {
				b.WriteString(c + pad)
			}
			if i < len(row)-1 {
				b.WriteString("  ")
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

// benchBaselines says what each baseline is; docs/benchmarks.md says more.
const benchBaselines = `baselines (same run, same embedded server, alternating with the ledger):
  append, http    raw JetStream synchronous publishes of the same messages (headers,
                  msg id, per-token expected sequence) at the same concurrency
  verify          in-process: SHA-256 of the secret and a Go map lookup, one goroutine;
                  HTTP: a bare net/http handler decoding the same request, fixed answer
  rebuild, export raw ordered-consumer replay of the same stream, nothing decoded
  notify          raw publish to a raw durable consumer on the ledger's own connection (no mirror hop)
ratio = ledger / baseline: for rates higher is better, for ms and MiB lower is.
`

// figure prints a number for people: rates whole with separators, the rest
// with the decimals their size deserves.
func figure(v float64, unit string) string {
	switch {
	case unit == "ms" || v < 10:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case unit == "MiB":
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return thousands(v)
}

func thousands(v float64) string {
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// errBench marks a workload whose ledger answered wrongly (not merely
// slowly): a benchmark of a broken path would mean nothing.
var errBench = errors.New("wrong answer")
