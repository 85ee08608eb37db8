package jsonl

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tally-billing/tally/engine"
)

func TestOpenCutsATornLine(t *testing.T) {
	for _, tt := range []struct{ name, before, after string }{
		{"empty", "", ""},
		{"whole lines", "{\"a\":1}\n{\"b\":2}\n", "{\"a\":1}\n{\"b\":2}\n"},
		{"torn", "{\"a\":1}\n{\"b\":", "{\"a\":1}\n"},
		{"only torn", "{\"b\":", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "rows.jsonl")
			if err := os.WriteFile(path, []byte(tt.before), 0o644); err != nil {
				t.Fatal(err)
			}
			s, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Write(context.Background(), []engine.RatedRow{{Customer: "c"}}); err != nil {
				t.Fatal(err)
			}
			s.Close()
			got, _ := os.ReadFile(path)
			if !strings.HasPrefix(string(got), tt.after) || strings.Count(string(got), "\n") != strings.Count(tt.after, "\n")+1 {
				t.Errorf("file after reopen and one write:\n%q\nwant %q then one row", got, tt.after)
			}
		})
	}
}
