package main

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// Tally's memory policy: the Go collector marks every live window at each
// collection, so collections are a large share of the CPU (bench/RESULTS.md:
// GOGC=300 took a run from 8.8 to 6.6 µs of CPU a record). The process
// therefore lets its heap grow further between collections (gcPercent)
// under a soft memory limit (memoryLimit) that makes the collector work
// harder as the process nears it, instead of running out of memory.

// defaultGCPercent is gcPercent's default.
const defaultGCPercent = 300

// memoryShare is the part of the container's (or machine's) memory an
// automatic memoryLimit takes.
const memoryShare = 0.8

// parseSize reads a byte size: a number with an optional unit (B, KB, MB,
// GB, TB in powers of 1000; KiB, MiB, GiB, TiB in powers of 1024).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = strings.TrimSpace(s[:i]), strings.TrimSpace(s[i:])
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%q is not a size such as 12GiB or 800MB", s)
	}
	mult := map[string]float64{"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
		"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}[strings.ToUpper(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("%q has an unknown unit %q (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)", s, unit)
	}
	if v*mult >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int64(v * mult), nil
}

// availableMemory is the container's memory limit (cgroup v2 or v1) when
// one is set, otherwise the machine's memory; 0 if neither is known.
func availableMemory() int64 {
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 {
			return v // "max" (no limit) falls through
		}
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err == nil {
		// cgroup v1 says "no limit" with a huge number.
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 && v < 1<<60 {
			return v
		}
	}
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "MemTotal:" {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// memoryLimitBytes resolves memoryLimit: auto, off (0) or a size.
func memoryLimitBytes(setting string) (int64, error) {
	switch strings.ToLower(strings.TrimSpace(setting)) {
	case "off":
		return 0, nil
	case "auto", "":
		return int64(memoryShare * float64(availableMemory())), nil
	}
	return parseSize(setting)
}

// applyMemoryPolicy sets the collector's percent and the soft memory limit
// of the process from cfg, except where the GOGC or GOMEMLIMIT environment
// variables already set them (they win: the operator said so), and logs
// and returns what it set.
func applyMemoryPolicy(cfg Config, log *slog.Logger) (string, error) {
	gc, limit := "GOGC (environment)", "GOMEMLIMIT (environment)"
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(cfg.GCPercent)
		gc = strconv.Itoa(cfg.GCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		bytes, err := memoryLimitBytes(cfg.MemoryLimit)
		if err != nil {
			return "", keyError("memoryLimit", "%v", err)
		}
		limit = "off"
		if bytes > 0 {
			debug.SetMemoryLimit(bytes)
			limit = fmt.Sprintf("%.1f GiB", float64(bytes)/(1<<30))
		}
	}
	log.Info("memory policy", "gcPercent", gc, "memoryLimit", limit)
	return fmt.Sprintf("gcPercent %s, memoryLimit %s", gc, limit), nil
}
