// Package promtext reads the Prometheus text exposition format that
// GetMetrics answers with, for the tests, benchmarks and demos that check
// or show the agent's metrics: one parser instead of a copy in each.
package promtext

import (
	"fmt"
	"strconv"
	"strings"
)

// Parse returns the value of every sample in text by its series: the
// metric name with its labels as written (`keel_containers`,
// `keel_guest_meminfo_bytes{item="MemFree"}`). Comments (# HELP, # TYPE)
// and blank lines are skipped; an optional timestamp after the value is
// ignored. Series and value may be separated by spaces or tabs. A line
// that is not `series value [timestamp]`, or a series that appears twice,
// is an error naming it, so a test that parses the whole text also checks
// its format.
func Parse(text string) (map[string]float64, error) {
	out := map[string]float64{}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		series, v, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("unable to parse metrics line %d %q: %w", i+1, line, err)
		}
		if _, dup := out[series]; dup {
			return nil, fmt.Errorf("unable to parse metrics line %d %q: series %s appears twice", i+1, line, series)
		}
		out[series] = v
	}
	return out, nil
}

// Value is the value of series in text (as Parse names it); ok is false
// when text has no such sample or its line is malformed.
func Value(text, series string) (v float64, ok bool) {
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, series) || strings.HasPrefix(line, "#") {
			continue
		}
		s, v, err := parseLine(line)
		if err == nil && s == series {
			return v, true
		}
	}
	return 0, false
}

// parseLine splits a sample line into its series and value. Label values
// may hold spaces, so the series ends at the closing brace when it has
// labels.
func parseLine(line string) (string, float64, error) {
	var series, rest string
	if i := strings.IndexByte(line, '{'); i >= 0 && i < strings.IndexAny(line+" ", " \t") {
		j := strings.LastIndexByte(line, '}')
		if j < i {
			return "", 0, fmt.Errorf("unclosed label set")
		}
		series, rest = line[:j+1], line[j+1:]
	} else {
		i := strings.IndexAny(line, " \t")
		if i < 0 {
			return "", 0, fmt.Errorf("no value")
		}
		series, rest = line[:i], line[i:]
	}
	f := strings.Fields(rest)
	if len(f) < 1 || len(f) > 2 {
		return "", 0, fmt.Errorf("want a value and an optional timestamp after the series, got %d fields", len(f))
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return "", 0, fmt.Errorf("bad value: %w", err)
	}
	if len(f) == 2 {
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			return "", 0, fmt.Errorf("bad timestamp: %w", err)
		}
	}
	return series, v, nil
}
