package kafka

import (
	"context"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// leaveStatic makes a static member (KIP-345) leave group, which closing
// its client does not: the group rebalances at once instead of keeping the
// member's partitions for it until its session expires. The client must be
// closed first, or it would rejoin. A failure is logged: the partitions
// then move after the session timeout, as for a crash.
func leaveStatic(cc ClientConfig, group, instanceID string, log *slog.Logger) {
	cl, err := kgo.NewClient(cc.opts(log)...)
	if err != nil {
		log.Warn("kafka group: leave", "group", group, "instance", instanceID, "err", err)
		return
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(cl).LeaveGroup(ctx, kadm.LeaveGroup(group).InstanceIDs(instanceID).Reason("instance stopped"))
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		log.Warn("kafka group: leave failed; its partitions move after the session timeout", "group", group, "instance", instanceID, "err", err)
	}
}
