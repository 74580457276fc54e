package natsbus

import (
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
	// a member, no such chat, ...).
	OutcomeError = "error"
	// OutcomeUnavailable (client side): no service answered in time, or
	// the request could not be sent.
	OutcomeUnavailable = "unavailable"
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
			Help:    "Requests sent over NATS, from send to decoded reply, by subject (without its prefix) and outcome (ok, error, unavailable).",
			Buckets: requestBuckets,
		}, []string{"subject", "outcome"}),
		handle: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "natsbus_handle_duration_seconds",
			Help:    "Requests answered over NATS, from receipt to reply, by subject (without its prefix) and outcome (ok, error, internal).",
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
	outcome := OutcomeOK
	if err != nil {
		outcome = OutcomeUnavailable
		if _, ok := errors.AsType[*busapi.Error](err); ok && !errors.Is(err, ErrUnavailable) {
			outcome = OutcomeError
		}
	}
	m.request.WithLabelValues(m.label(subject), outcome).Observe(time.Since(start).Seconds())
}

func (m *Metrics) observeHandled(subject string, start time.Time, outcome string) {
	if m == nil {
		return
	}
	m.handle.WithLabelValues(m.label(subject), outcome).Observe(time.Since(start).Seconds())
}
