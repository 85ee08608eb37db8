package state

import (
	"encoding/binary"
	"fmt"
	"testing"
)

// BenchmarkCommit measures one synced checkpoint of n dirty windows (~40 B
// keys, ~30 B values) and n/10 outbox rows (~300 B).
func BenchmarkCommit(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		b.Run(fmt.Sprintf("windows=%d", n), func(b *testing.B) {
			s, err := Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			cp := &Checkpoint{Outbox: map[Stream][][]byte{}}
			for i := range n {
				key := binary.BigEndian.AppendUint64([]byte(fmt.Sprintf("voice_seconds\x00sub-%07d\x00destination=uk\x00", i)), 1)
				cp.WindowPuts = append(cp.WindowPuts, KV{Key: key, Value: make([]byte, 30)})
				if i%10 == 0 {
					cp.Outbox[StreamRated] = append(cp.Outbox[StreamRated], make([]byte, 300))
				}
			}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				cp.Seq = uint64(i + 1)
				if err := s.Commit(cp); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "windows/s")
		})
	}
}
