// Command kafka is a standalone single-broker Kafka for benchmarks: franz-go's
// in-memory kfake, listening on a fixed address so that third-party clients
// (librdkafka in ClickHouse's Kafka engine, kcat) and Tally can all use the
// same preloaded topic. It runs until SIGINT or SIGTERM.
//
//	go run ./bench/kafka -addr 127.0.0.1:29092 -topic usage -partitions 4
//
// The broker advertises exactly -addr in its metadata, so clients connect
// back to it. Topics other than the seeded ones are created on demand (by
// Tally's CreateTopics, or auto-created on a metadata request).
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:29092", "host:port to listen on and advertise")
	topics := flag.String("topic", "usage", "comma-separated topics to create at start")
	partitions := flag.Int("partitions", 4, "partitions of each seeded topic, and of topics created with the broker default")
	dataDir := flag.String("data-dir", "", "persist the log in this folder (default: memory only)")
	verbose := flag.Bool("v", false, "log the broker's requests (debug)")
	flag.Parse()
	if err := run(*addr, *topics, *partitions, *dataDir, *verbose); err != nil {
		fmt.Fprintf(os.Stderr, "kafka: %v\n", err)
		os.Exit(1)
	}
}

func run(addr, topics string, partitions int, dataDir string, verbose bool) error {
	_, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 {
		return fmt.Errorf("-addr %q: needs a fixed port", addr)
	}
	if partitions < 1 {
		return fmt.Errorf("-partitions %d: must be at least 1", partitions)
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(port),
		// kfake listens on 127.0.0.1:port; listen on -addr instead. The
		// broker advertises its listener's address, so this is also what
		// metadata responses name.
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, addr) }),
		kfake.DefaultNumPartitions(partitions),
		kfake.AllowAutoTopicCreation(),
	}
	var seeded []string
	for _, t := range strings.Split(topics, ",") {
		if t = strings.TrimSpace(t); t != "" {
			seeded = append(seeded, t)
		}
	}
	if len(seeded) > 0 {
		opts = append(opts, kfake.SeedTopics(int32(partitions), seeded...))
	}
	if dataDir != "" {
		opts = append(opts, kfake.DataDir(dataDir))
	}
	if verbose {
		opts = append(opts, kfake.WithLogger(kfake.BasicLogger(os.Stderr, kfake.LogLevelDebug)))
	}
	cluster, err := kfake.NewCluster(opts...)
	if err != nil {
		return fmt.Errorf("start kfake on %s: %w", addr, err)
	}
	defer cluster.Close()
	// One line a script can wait for.
	fmt.Printf("kafka: listening on %s, topics %v with %d partitions\n", strings.Join(cluster.ListenAddrs(), ","), seeded, partitions)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	return nil
}
