package natsbus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/communications/communications/libs/busapi"
)

// The outcome label of the request metrics.
const (
	// OutcomeOK: the request was answered with data.
	OutcomeOK = "ok"
	// OutcomeError: the answer was a coded error for the requester (not
	// a member, no such chat, ...), or (client side) a reply that did not
	// decode.
	OutcomeError = "error"
	// OutcomeUnavailable (client side): no service answered in time, or
	// the request could not be sent.
	OutcomeUnavailable = "unavailable"
	// OutcomeCanceled (client side): the requester gave up (its context
	// was canceled) before the answer came; not the answering service's
	// fault.
	OutcomeCanceled = "canceled"
	// OutcomeInternal (server side): the handler failed inside and
	// answered protocol.CodeInternal.
	OutcomeInternal = "internal"
)

// OtherSubject is the subject label of a request whose subject lacks the
// configured prefix; it keeps the label set bounded.
const OtherSubject = "other"

// Metrics are the Prometheus histograms of the requests a service sends
// (natsbus_request_duration_seconds) and answers
// (natsbus_handle_duration_seconds), by subject and outcome. The subject
// label is the subject without its prefix ("chat.send"): every request
// subject is one of the constants of libs/subjects, so the label set is
// bounded. A nil *Metrics records nothing.
type Metrics struct {
	prefix  string
	request *prometheus.HistogramVec
	handle  *prometheus.HistogramVec
}

// requestBuckets span 0.5 ms to about 8 s: a request is answered within
// a millisecond or two on a healthy system and times out at 5 s.
var requestBuckets = prometheus.ExponentialBuckets(0.0005, 2, 15)

// NewMetrics registers the request metrics in reg. prefix is the subject
// prefix the service uses (subjects.Subjects.Prefix).
func NewMetrics(reg prometheus.Registerer, prefix string) (*Metrics, error) {
	m := &Metrics{
		prefix: prefix + ".",
		request: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "natsbus_request_duration_seconds",
			Help:    "Requests sent over NATS, from send to decoded reply, by subject (without its prefix) and outcome (ok, error, unavailable, canceled).",
			Buckets: requestBuckets,
		}, []string{"subject", "outcome"}),
		handle: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "natsbus_handle_duration_seconds",
			Help:    "Requests answered over NATS, from receipt (including the wait for a free handler) to reply, by subject (without its prefix) and outcome (ok, error, internal).",
			Buckets: requestBuckets,
		}, []string{"subject", "outcome"}),
	}
	for _, c := range []prometheus.Collector{m.request, m.handle} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register natsbus metrics: %w", err)
		}
	}
	return m, nil
}

// label returns the subject label of subject.
func (m *Metrics) label(subject string) string {
	if rest, ok := strings.CutPrefix(subject, m.prefix); ok && rest != "" {
		return rest
	}
	return OtherSubject
}

func (m *Metrics) observeRequest(subject string, start time.Time, err error) {
	if m == nil {
		return
	}
	m.request.WithLabelValues(m.label(subject), requestOutcome(err)).Observe(time.Since(start).Seconds())
}

// requestOutcome is the outcome label of a request that returned err.
func requestOutcome(err error) string {
	if err == nil {
		return OutcomeOK
	}
	if errors.Is(err, context.Canceled) {
		return OutcomeCanceled
	}
	if errors.Is(err, ErrUnavailable) {
		return OutcomeUnavailable
	}
	if _, ok := errors.AsType[*busapi.Error](err); ok || errors.Is(err, errDecode) {
		return OutcomeError
	}
	return OutcomeUnavailable
}

// observeHandled records a request answered d after it was received.
func (m *Metrics) observeHandled(subject string, d time.Duration, outcome string) {
	if m == nil {
		return
	}
	m.handle.WithLabelValues(m.label(subject), outcome).Observe(d.Seconds())
}
