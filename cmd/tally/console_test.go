package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/engine"
)

// chromium runs headless Chromium (Debian's chromium) with args, letting
// the page's timers run for a virtual 8 seconds (its script polls).
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	bin := requireTool(t, "chromium")
	base := []string{"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=8000"}
	cmd := exec.Command(bin, append(base, args...)...)
	var out, errs strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errs
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("chromium %v: %v\n%s", args, err, errs.String())
		}
	case <-time.After(90 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("chromium %v: no answer in 90 s\n%s", args, errs.String())
	}
	return out.String()
}

// shown reads the data-value of the element with id in a dumped DOM.
func shown(t *testing.T, dom, id string) string {
	t.Helper()
	m := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*data-value="([^"]*)"`).FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("the page shows no %s:\n%s", id, dom[:min(len(dom), 3000)])
	}
	return m[1]
}

// cellValues lists the data-value of the cells of table id, in order.
func cellValues(dom, id string) []string {
	start := strings.Index(dom, `id="`+id+`"`)
	if start < 0 {
		return nil
	}
	end := strings.Index(dom[start:], "</table>")
	var out []string
	for _, m := range regexp.MustCompile(`data-value="([^"]*)"`).FindAllStringSubmatch(dom[start:start+end], -1) {
		out = append(out, m[1])
	}
	return out
}

// TestConsoleInBrowser loads the console of a running Tally in headless
// Chromium, once the engine has rated a fixed stream (so the numbers hold
// still), and checks the numbers the page shows, after its script polled
// the API, against the API: records consumed, lag, watermark, revenue by
// currency, the top customers and their amounts, dead letters by reason;
// then a customer's page against the customer's summary and statement. A
// screenshot of each page is kept (TALLY_TEST_ARTIFACTS, default
// $TMPDIR/tally-test-artifacts).
func TestConsoleInBrowser(t *testing.T) {
	requireTool(t, "chromium")
	r, s := startRated(t, 11)
	base := "http://" + r.app.listener.Addr().String()

	var api Overview
	waitFor(t, 60*time.Second, "the stream to be rated and the overview to hold still", func() string {
		var a, b Overview
		getJSON(t, base+"/v1/overview", &a)
		time.Sleep(500 * time.Millisecond)
		getJSON(t, base+"/v1/overview", &b)
		if b.Consumed < uint64(len(s.msgs)) || b.Lag != 0 || len(b.TopCustomers) == 0 {
			return fmt.Sprintf("consumed %d of %d, lag %d, %d top customers", b.Consumed, len(s.msgs), b.Lag, len(b.TopCustomers))
		}
		ja, _ := json.Marshal([]any{a.Revenue, a.TopCustomers, a.DeadLetters, a.Watermark})
		jb, _ := json.Marshal([]any{b.Revenue, b.TopCustomers, b.DeadLetters, b.Watermark})
		if string(ja) != string(jb) {
			return "still moving"
		}
		api = b
		return ""
	})

	dom := chromium(t, "--dump-dom", base+"/")
	if got := shown(t, dom, "consumed"); got != fmt.Sprint(api.Consumed) {
		t.Errorf("console shows %s records consumed, the API %d", got, api.Consumed)
	}
	if got := shown(t, dom, "lag"); got != "0" {
		t.Errorf("console shows lag %s, the API %d", got, api.Lag)
	}
	if got := shown(t, dom, "watermark"); got != api.Watermark.Format(time.RFC3339Nano) {
		t.Errorf("console shows watermark %s, the API %s", got, api.Watermark)
	}
	if got := shown(t, dom, "health"); got != "ready" {
		t.Errorf("console shows health %q", got)
	}
	var revenue []string
	for _, c := range sortedKeys(api.Revenue) {
		revenue = append(revenue, api.Revenue[c].String())
	}
	if got := cellValues(dom, "revenue"); strings.Join(got, " ") != strings.Join(revenue, " ") || len(got) == 0 {
		t.Errorf("console shows revenue %v, the API %v", got, api.Revenue)
	}
	var top []string
	for _, c := range api.TopCustomers {
		top = append(top, c.Amount.String())
	}
	if got := cellValues(dom, "top"); strings.Join(got, " ") != strings.Join(top, " ") {
		t.Errorf("console shows top customers' amounts %v, the API %v", got, top)
	}
	var dead []string
	for _, reason := range sortedKeys(api.DeadLetters) {
		dead = append(dead, fmt.Sprint(api.DeadLetters[reason]))
	}
	if got := cellValues(dom, "dead"); strings.Join(got, " ") != strings.Join(dead, " ") {
		t.Errorf("console shows dead letters %v, the API %v", got, api.DeadLetters)
	}

	// The top customer's page.
	customer := api.TopCustomers[0].Customer
	page := base + "/customers/" + customer
	cdom := chromium(t, "--dump-dom", page)
	var summary engine.Usage
	getJSON(t, base+"/v1/customers/"+customer+"/summary", &summary)
	var amounts []string
	total := decimal.Zero
	for _, p := range summary.Periods {
		amounts = append(amounts, p.Quantity.String(), p.Amount.String())
		total = total.Add(p.Amount)
	}
	if got := cellValues(cdom, "periods"); strings.Join(got, " ") != strings.Join(amounts, " ") {
		t.Errorf("%s's page shows %v, the summary %v", customer, got, amounts)
	}
	var st engine.Statement
	getJSON(t, base+"/v1/customers/"+customer+"/statement", &st)
	if got := shown(t, cdom, "total"); got != st.Total.String() {
		t.Errorf("%s's page shows a total of %s, the statement %s", customer, got, st.Total)
	}

	dir := os.Getenv("TALLY_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "tally-test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, url := range map[string]string{"console.png": base + "/", "console-customer.png": page} {
		path := filepath.Join(dir, name)
		chromium(t, "--window-size=1400,1000", "--screenshot="+path, url)
		if fi, err := os.Stat(path); err != nil || fi.Size() < 10_000 {
			t.Errorf("screenshot %s: %v", path, err)
		}
		t.Logf("screenshot: %s", path)
	}
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
