package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/tally-billing/tally/engine"
)

// queryTimeout bounds one live query.
const queryTimeout = 2 * time.Second

// usageQuerier is what the API needs of the engine.
type usageQuerier interface {
	Usage(ctx context.Context, req engine.UsageRequest) (engine.Usage, error)
}

// apiError writes a JSON error with a message.
func apiError(w http.ResponseWriter, status int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf(format, args...)})
}

// registerAPI adds the live query API:
//
//	GET /v1/usage?customer=C[&meter=M][&from=T][&to=T][&window=W]   windows and periods
//	GET /v1/customers/{id}/summary                        periods of every meter
func registerAPI(mux *http.ServeMux, q usageQuerier) {
	mux.HandleFunc("GET /v1/usage", func(w http.ResponseWriter, r *http.Request) {
		params := r.URL.Query()
		req := engine.UsageRequest{Customer: params.Get("customer"), Meter: params.Get("meter"), Windows: true, Rollup: params.Get("window")}
		if req.Customer == "" {
			apiError(w, http.StatusBadRequest, "parameter customer is required, e.g. /v1/usage?customer=sub-000042")
			return
		}
		for _, name := range []string{"from", "to"} {
			v := params.Get(name)
			if v == "" {
				continue
			}
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				apiError(w, http.StatusBadRequest, "parameter %s=%q is not an RFC 3339 time such as 2026-11-24T10:00:00Z", name, v)
				return
			}
			if name == "from" {
				req.From = t
			} else {
				req.To = t
			}
		}
		if !req.From.IsZero() && !req.To.IsZero() && !req.From.Before(req.To) {
			apiError(w, http.StatusBadRequest, "from (%s) must be before to (%s)", req.From.Format(time.RFC3339), req.To.Format(time.RFC3339))
			return
		}
		for name := range params {
			switch name {
			case "customer", "meter", "from", "to", "window":
			default:
				apiError(w, http.StatusBadRequest, "unknown parameter %q; use customer, meter, from, to, window", name)
				return
			}
		}
		answer(w, r, q, req)
	})
	mux.HandleFunc("GET /v1/customers/{id}/summary", func(w http.ResponseWriter, r *http.Request) {
		answer(w, r, q, engine.UsageRequest{Customer: r.PathValue("id")})
	})
}

func answer(w http.ResponseWriter, r *http.Request, q usageQuerier, req engine.UsageRequest) {
	ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
	defer cancel()
	u, err := q.Usage(ctx, req)
	switch {
	case errors.Is(err, engine.ErrUnknownMeter), errors.Is(err, engine.ErrBadRequest):
		apiError(w, http.StatusBadRequest, "%v", err)
		return
	case errors.Is(err, engine.ErrNotRunning), errors.Is(err, context.DeadlineExceeded):
		apiError(w, http.StatusServiceUnavailable, "live state unavailable: %v; retry", err)
		return
	case err != nil:
		apiError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(u)
}
