// Command tally is the streaming usage aggregation and rating engine.
//
//	tally run --config FILE [flags]   production: real Kafka and ClickHouse
//	tally demo [flags]                everything in-process, with generated usage
//	tally rate / tally audit          offline rating; reconciliation with ClickHouse
//
// See README for the configuration reference.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/tally-billing/tally/engine"
)

type engineStats = engine.Stats

const usage = `tally: streaming usage aggregation and rating

usage:
  tally run --config FILE [flags]   run against Kafka brokers (and ClickHouse)
  tally run --check-config --config FILE [flags]
                                    check the configuration and its plans, connect nowhere, exit 1 on a problem
  tally demo [flags]                live demo: in-process Kafka, generated telecom usage
  tally rate --plans F --input F    rate a JSON-lines file offline with the engine's code
  tally statement --plans F --input F --customer C --period YYYY-MM [--format html]
                                    a customer's statement for a billing period, from those rows
  tally audit --config F --from T --to T
                                    recompute from the source and compare with ClickHouse (exit 1 on any mismatch)
  tally bench [flags]               end-to-end benchmark: bare consume vs Tally, checkpoints, freshness
  tally help COMMAND                flags of a command

Stop with Ctrl-C (graceful: final checkpoint, sinks drained); a second Ctrl-C stops at once.
`

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := make(chan struct{})
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-signals
		close(stop)
		<-signals
		log.Warn("second signal: stopping at once (state stays consistent)")
		cancel()
	}()

	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "run":
		err = runCommand(ctx, args, stop, log)
	case "demo":
		err = runDemo(ctx, args, stop, os.Stdout, log)
	case "rate":
		quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		err = runRate(ctx, args, os.Stdout, os.Stderr, quiet)
	case "statement":
		quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		err = runStatement(ctx, args, os.Stdout, os.Stderr, quiet)
	case "audit":
		quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		err = runAudit(ctx, args, os.Stdout, os.Stderr, quiet)
	case "bench":
		quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		err = runBench(ctx, args, os.Stdout, quiet)
	case "help", "-h", "--help":
		if len(args) > 0 {
			os.Args = []string{os.Args[0], args[0], "-h"}
			main()
			return
		}
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "tally: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "tally: %v\n", err)
		os.Exit(1)
	}
}

// runCommand is `tally run`.
func runCommand(ctx context.Context, args []string, stop <-chan struct{}, log *slog.Logger) error {
	// --check-config checks and stops (checkConfig).
	check := false
	args = slices.DeleteFunc(slices.Clone(args), func(a string) bool {
		is := a == "--check-config" || a == "-check-config"
		check = check || is
		return is
	})
	cfg, err := loadConfig("run", args, true)
	if err != nil {
		return err
	}
	if check {
		return checkConfig(cfg, os.Stdout, log)
	}
	if _, err := applyMemoryPolicy(cfg, log); err != nil {
		return err
	}
	a, err := build(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.close()
	return a.run(ctx, stop)
}
