package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
)

// bareConsumeKgo reads topic from its start until n records came, with
// one kgo client (read committed, as Tally reads), keeping nothing.
func bareConsumeKgo(ctx context.Context, brokers []string, topic string, n int) (float64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.FetchMaxPartitionBytes(4<<20), kgo.FetchMaxBytes(16<<20))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	got := 0
	for got < n {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("bench: bare kgo consume: %d of %d records: %w", got, n, err)
		}
		if err := fetches.Err0(); err != nil {
			return 0, fmt.Errorf("bench: bare kgo consume: %w", err)
		}
		got += fetches.NumRecords()
	}
	return float64(got) / time.Since(start).Seconds(), nil
}

// bareConsumeKafkaGo reads every partition of topic to its end with
// kafka-go's Conn.ReadBatch, one goroutine per partition, keeping nothing:
// the client Tally used before kgo, kept for comparison.
func bareConsumeKafkaGo(ctx context.Context, brokers []string, topic string) (float64, error) {
	conn, err := kafkago.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return 0, err
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		return 0, err
	}
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, len(parts))
	start := time.Now()
	for _, p := range parts {
		wg.Add(1)
		go func(partition int) {
			defer wg.Done()
			c, err := kafkago.DialLeader(ctx, "tcp", brokers[0], topic, partition)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			first, last, err := c.ReadOffsets()
			if err != nil {
				errs <- err
				return
			}
			if _, err := c.Seek(first, kafkago.SeekAbsolute); err != nil {
				errs <- err
				return
			}
			for offset := first; offset < last; {
				b := c.ReadBatchWith(kafkago.ReadBatchConfig{MinBytes: 1, MaxBytes: 16 << 20, MaxWait: time.Second})
				for {
					m, err := b.ReadMessage()
					if err != nil {
						break
					}
					offset = m.Offset + 1
					total.Add(1)
				}
				if err := b.Close(); err != nil && !errors.Is(err, io.EOF) {
					errs <- err
					return
				}
			}
		}(p.ID)
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, fmt.Errorf("bench: bare kafka-go consume: %w", err)
	}
	return float64(total.Load()) / elapsed.Seconds(), nil
}
