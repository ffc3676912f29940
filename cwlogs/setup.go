package cwlogs

// Creating the log group and stream the Shipper writes to, with its
// retries and rate-limited error logs.

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
)

// ensure creates the group and stream if they are missing, retrying
// transient failures. It returns false only when the Shipper shuts down.
func (s *Shipper) ensure() bool {
	for attempt := 0; ; attempt++ {
		err := s.createGroupAndStream()
		if err == nil {
			s.ready = true
			return true
		}
		if s.runCtx.Err() != nil {
			return false
		}
		class := classify(err)
		s.noteFailure("create group/stream", err, class)
		if class == classPermanent {
			// PutLogEvents will tell whether they exist after all.
			if s.ensureLog.allow(time.Now()) {
				slog.Error("cwlogs: cannot create log group or stream", "group", s.cfg.Group,
					"stream", s.cfg.Stream, "err", err)
			}
			s.ready = true
			return true
		}
		if !s.retryWait(attempt) {
			return false
		}
		s.mu.Lock()
		s.st.Retried++
		s.mu.Unlock()
	}
}

// createGroupAndStream creates the log group (applying the retention to a
// group it creates) and the log stream. Existing ones are fine. Being denied
// creation is not an error: many IAM policies allow writing to a group an
// administrator created but not creating one.
func (s *Shipper) createGroupAndStream() error {
	group, stream := aws.String(s.cfg.Group), aws.String(s.cfg.Stream)

	ctx, cancel := s.callContext()
	_, err := s.client.CreateLogGroup(ctx, &cloudwatchlogs.CreateLogGroupInput{LogGroupName: group}, noSDKRetries)
	cancel()
	switch {
	case err == nil:
		// A group just created has no retention yet, also when it replaces
		// one (deleted while running) that this shipper gave one.
		s.groupCreated, s.retentionSet = true, false
		slog.Info("cwlogs: created log group", "group", s.cfg.Group)
	case isCode(err, "ResourceAlreadyExistsException"):
	case isCode(err, "AccessDeniedException"):
		if s.deniedLog.allow(time.Now()) {
			slog.Warn("cwlogs: not allowed to create the log group; assuming it exists", "group", s.cfg.Group, "err", err)
		}
	default:
		return fmt.Errorf("creating log group %q: %w", s.cfg.Group, err)
	}

	if s.groupCreated && s.cfg.RetentionDays > 0 && !s.retentionSet {
		ctx, cancel := s.callContext()
		_, err := s.client.PutRetentionPolicy(ctx, &cloudwatchlogs.PutRetentionPolicyInput{
			LogGroupName:    group,
			RetentionInDays: aws.Int32(s.cfg.RetentionDays),
		}, noSDKRetries)
		cancel()
		switch {
		case err == nil:
			s.retentionSet = true
		case classify(err) == classPermanent || isCode(err, "AccessDeniedException"):
			// Logging matters more than retention: go on without it.
			slog.Error("cwlogs: cannot set the log group's retention", "group", s.cfg.Group,
				"days", s.cfg.RetentionDays, "err", err)
			s.retentionSet = true
		default:
			return fmt.Errorf("setting retention of log group %q: %w", s.cfg.Group, err)
		}
	}

	ctx, cancel = s.callContext()
	_, err = s.client.CreateLogStream(ctx, &cloudwatchlogs.CreateLogStreamInput{LogGroupName: group, LogStreamName: stream}, noSDKRetries)
	cancel()
	switch {
	case err == nil, isCode(err, "ResourceAlreadyExistsException"):
	case isCode(err, "AccessDeniedException"):
		if s.deniedLog.allow(time.Now()) {
			slog.Warn("cwlogs: not allowed to create the log stream; assuming it exists", "group", s.cfg.Group,
				"stream", s.cfg.Stream, "err", err)
		}
	default:
		return fmt.Errorf("creating log stream %q: %w", s.cfg.Stream, err)
	}
	return nil
}

// rateLimit allows one event per minute.
type rateLimit struct{ last time.Time }

func (r *rateLimit) allow(now time.Time) bool {
	if !r.last.IsZero() && now.Sub(r.last) < time.Minute {
		return false
	}
	r.last = now
	return true
}
