package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestBenchSmoke runs `ledger bench --events 2000 -o json` and checks the
// shape of what it prints, not the speed: the header, a row for every
// workload, every figure positive, every ratio the ledger's figure over the
// baseline's, a verdict wherever there is a target, and the temporary
// directory gone.
func TestBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every workload of ledger bench")
	}
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"bench", "--events", "2000", "-o", "json"}, strings.NewReader(""), &out, &errb, func(string) string { return "" })
	if code != exitOK {
		t.Fatalf("exit %d\nstderr:\n%s", code, errb.String())
	}

	var header map[string]any
	if err := json.Unmarshal(out.Bytes(), &header); err != nil {
		t.Fatalf("not one JSON document: %v\n%s", err, out.String())
	}
	for _, k := range []string{"go_version", "cpu", "cores", "events", "concurrency", "rows"} {
		if _, ok := header[k]; !ok {
			t.Errorf("no %q in the output", k)
		}
	}
	var rep benchReport
	dec := json.NewDecoder(bytes.NewReader(out.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rep.GoVersion, "go") || rep.CPU == "" || rep.Cores < 1 || rep.Events != 2000 || rep.Concurrency != 64 {
		t.Errorf("header: %+v", rep)
	}

	seen := map[string]int{}
	targets := 0
	for _, r := range rep.Rows {
		seen[r.Workload]++
		if r.Metric == "" || r.Unit == "" {
			t.Errorf("row without a metric or unit: %+v", r)
		}
		if !(r.Ledger > 0 && r.Baseline > 0 && r.Ratio > 0) {
			t.Errorf("%s %s: figures must be positive: %+v", r.Workload, r.Metric, r)
		}
		if want := r.Ledger / r.Baseline; math.Abs(r.Ratio-want) > 1e-9*want {
			t.Errorf("%s %s: ratio %v, want ledger/baseline = %v", r.Workload, r.Metric, r.Ratio, want)
		}
		if (r.Target == "") != (r.Met == nil) {
			t.Errorf("%s %s: a target needs a verdict and a verdict a target: %+v", r.Workload, r.Metric, r)
		}
		if r.Met != nil {
			targets++
		}
	}
	for _, w := range benchWorkloads {
		if seen[w] == 0 {
			t.Errorf("no row for workload %s", w)
		}
	}
	// append at --concurrency, in-process verify, HTTP verify p99, rebuild,
	// export Parquet, JSONL and memory, notify p99.
	if targets != 8 {
		t.Errorf("%d rows with a target, want 8", targets)
	}

	m := regexp.MustCompile(`data in (\S+)`).FindStringSubmatch(errb.String())
	if m == nil {
		t.Fatalf("stderr does not name the data directory:\n%s", errb.String())
	}
	if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Errorf("%s is still there after the run (%v)", m[1], err)
	}
}

func TestBenchUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--only", "append", "--only", "everything"}, "--only"},
		{[]string{"bench", "--events", "10"}, "--events"},
		{[]string{"bench", "--concurrency", "0"}, "--concurrency"},
		{[]string{"bench", "-o", "yaml"}, "-o"},
		{[]string{"bench", "extra"}, "unknown command"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), tc.args, strings.NewReader(""), &out, &errb, func(string) string { return "" })
		if code != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d naming %s", tc.args, code, errb.String(), exitUsage, tc.want)
		}
	}
}
