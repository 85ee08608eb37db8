package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/engine"
)

// queryTimeout bounds one live query.
const queryTimeout = 2 * time.Second

// usageQuerier is what the API needs of the engine.
type usageQuerier interface {
	Usage(ctx context.Context, req engine.UsageRequest) (engine.Usage, error)
	Entitlements(ctx context.Context, customer string) (engine.Entitlements, error)
	CheckEntitlement(ctx context.Context, customer, meter string, units decimal.Decimal) (engine.EntitlementCheck, error)
	SLA(ctx context.Context, customer string, month time.Time) (engine.SLAReport, error)
	Statement(ctx context.Context, customer string, month time.Time) (engine.Statement, error)
}

// apiError writes a JSON error with a message.
func apiError(w http.ResponseWriter, status int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // ">=" reads as itself in a terminal
	_ = enc.Encode(map[string]string{"error": fmt.Sprintf(format, args...)})
}

// registerAPI adds the live query API:
//
//	GET /v1/usage?customer=C[&meter=M][&from=T][&to=T][&window=W]   windows and periods
//	GET /v1/customers/{id}/summary                        periods of every meter
//	GET /v1/customers/{id}/entitlements                   limit, used, remaining, state per meter
//	GET /v1/customers/{id}/entitlements/{meter}?units=N   are N more units allowed now
//	GET /v1/customers/{id}/sla[?period=YYYY-MM]           SLA objectives: measured, target, state, credit
//	GET /v1/customers/{id}/statement[?period=YYYY-MM]     the period's statement (JSON; HTML with Accept: text/html or format=html)
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
	mux.HandleFunc("GET /v1/customers/{id}/entitlements", func(w http.ResponseWriter, r *http.Request) {
		if len(r.URL.Query()) > 0 {
			apiError(w, http.StatusBadRequest, "this takes no parameters; /v1/customers/{id}/entitlements/{meter}?units=N checks units")
			return
		}
		reply(w, r, func(ctx context.Context) (any, error) { return q.Entitlements(ctx, r.PathValue("id")) })
	})
	mux.HandleFunc("GET /v1/customers/{id}/entitlements/{meter}", func(w http.ResponseWriter, r *http.Request) {
		params := r.URL.Query()
		for name := range params {
			if name != "units" {
				apiError(w, http.StatusBadRequest, "unknown parameter %q; use units", name)
				return
			}
		}
		v := params.Get("units")
		units, err := decimal.NewFromString(v)
		if err != nil || units.IsNegative() {
			apiError(w, http.StatusBadRequest, "parameter units=%q is not a number of units >= 0, e.g. ?units=10", v)
			return
		}
		reply(w, r, func(ctx context.Context) (any, error) {
			return q.CheckEntitlement(ctx, r.PathValue("id"), r.PathValue("meter"), units)
		})
	})
	mux.HandleFunc("GET /v1/customers/{id}/sla", func(w http.ResponseWriter, r *http.Request) {
		month, ok := periodParam(w, r)
		if !ok {
			return
		}
		reply(w, r, func(ctx context.Context) (any, error) { return q.SLA(ctx, r.PathValue("id"), month) })
	})
	mux.HandleFunc("GET /v1/customers/{id}/statement", func(w http.ResponseWriter, r *http.Request) {
		format := r.URL.Query().Get("format")
		html := format == "html" || format == "" && strings.Contains(r.Header.Get("Accept"), "text/html")
		if format != "" && format != "html" && format != "json" {
			apiError(w, http.StatusBadRequest, "parameter format=%q is neither json nor html", format)
			return
		}
		q2 := r.URL.Query()
		q2.Del("format")
		r2 := r.Clone(r.Context())
		r2.URL.RawQuery = q2.Encode()
		month, ok := periodParam(w, r2)
		if !ok {
			return
		}
		if !html {
			reply(w, r, func(ctx context.Context) (any, error) { return q.Statement(ctx, r.PathValue("id"), month) })
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
		defer cancel()
		st, err := q.Statement(ctx, r.PathValue("id"), month)
		if err != nil {
			reply(w, r, func(context.Context) (any, error) { return nil, err })
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = writeStatement(w, st, "html")
	})
}

// periodParam reads the only parameter, period=YYYY-MM (the billing period
// starting in that month; none: the period in progress), answering 400
// when it is bad.
func periodParam(w http.ResponseWriter, r *http.Request) (time.Time, bool) {
	params := r.URL.Query()
	for name := range params {
		if name != "period" {
			apiError(w, http.StatusBadRequest, "unknown parameter %q; use period=YYYY-MM", name)
			return time.Time{}, false
		}
	}
	v := params.Get("period")
	if v == "" {
		return time.Time{}, true
	}
	month, err := time.Parse("2006-01", v)
	if err != nil {
		apiError(w, http.StatusBadRequest, "parameter period=%q is not a month such as 2026-11", v)
		return time.Time{}, false
	}
	return month, true
}

func answer(w http.ResponseWriter, r *http.Request, q usageQuerier, req engine.UsageRequest) {
	reply(w, r, func(ctx context.Context) (any, error) { return q.Usage(ctx, req) })
}

// reply answers a live query with its JSON, or with the error's status.
func reply(w http.ResponseWriter, r *http.Request, query func(ctx context.Context) (any, error)) {
	ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
	defer cancel()
	u, err := query(ctx)
	switch {
	case errors.Is(err, engine.ErrNoEntitlement), errors.Is(err, engine.ErrNoSLA), errors.Is(err, engine.ErrPeriodSettled):
		apiError(w, http.StatusNotFound, "%v", err)
		return
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
