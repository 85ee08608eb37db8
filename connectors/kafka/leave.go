package kafka

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// leaveStatic makes a static member (KIP-345) leave group, which closing
// its client does not: the group rebalances at once instead of keeping the
// member's partitions for it until its session expires. The client must be
// closed first, or it would rejoin.
//
// The request names the member id as well as the instance id: a broker
// then refuses it (FENCED_INSTANCE_ID) if a newer process took the
// instance id over in the meantime (a restart racing a slow leave),
// instead of evicting that process. An empty member (never joined) sends
// nothing. A failure is logged: the partitions then move after the
// session timeout, as after a crash.
func leaveStatic(cc ClientConfig, group, instanceID, member string, log *slog.Logger) {
	if member == "" {
		return
	}
	cl, err := kgo.NewClient(cc.opts(log)...)
	if err != nil {
		log.Warn("kafka group: leave", "group", group, "instance", instanceID, "err", err)
		return
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req := kmsg.NewPtrLeaveGroupRequest()
	req.Group = group
	req.MemberID = member // versions before 3 (Kafka < 2.4) name one member
	m := kmsg.NewLeaveGroupRequestMember()
	m.MemberID, m.InstanceID = member, kmsg.StringPtr(instanceID)
	reason := "instance stopped"
	m.Reason = &reason
	req.Members = append(req.Members, m)
	resp, err := req.RequestWith(ctx, cl)
	if err == nil {
		err = kerr.ErrorForCode(resp.ErrorCode)
		for _, m := range resp.Members {
			if err == nil {
				err = kerr.ErrorForCode(m.ErrorCode)
			}
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, kerr.UnknownMemberID) || errors.Is(err, kerr.FencedInstanceID):
		// Gone already (the client left by itself, or its session
		// expired), or a newer process holds the id: nothing to leave.
		log.Info("kafka group: nothing to leave", "group", group, "instance", instanceID, "answer", err)
	default:
		log.Warn("kafka group: leave failed; its partitions move after the session timeout", "group", group, "instance", instanceID, "err", err)
	}
}
