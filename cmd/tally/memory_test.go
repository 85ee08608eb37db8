package main

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"12GiB": 12 << 30, "800MB": 800e6, "1.5 GiB": 3 << 29, "4096": 4096, "2kib": 2048, "1TB": 1e12,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "12GiBs", "-1GB", "0", "GiB", "1e400"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
	// auto is a share of what this machine or container has.
	if got, err := memoryLimitBytes("auto"); err != nil || got <= 0 {
		t.Errorf("memoryLimit auto = %d, %v; want a positive limit", got, err)
	}
	if got, err := memoryLimitBytes("off"); err != nil || got != 0 {
		t.Errorf("memoryLimit off = %d, %v; want 0 (no limit)", got, err)
	}
}
