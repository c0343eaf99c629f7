/*
 * Kernel ABI probe for exitrd's unit tests (src/teardown/devnode.rs,
 * abi_probe). Prints "key value" lines with the sizes, offsets and ioctl
 * numbers the installed kernel headers define; the Rust tests compare them
 * with the values the teardown modules use.
 */
#include <stddef.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <linux/major.h>
#include <linux/dm-ioctl.h>
#include <linux/raid/md_u.h>
#include <linux/loop.h>
#include <linux/nbd.h>
#include <linux/netlink.h>
#include <linux/watchdog.h>
#include <linux/mount.h>
#include <sys/syscall.h>

#define P(key, value) printf("%s %llu\n", key, (unsigned long long)(value))
#define OFF(type, field) P(#type "." #field, offsetof(struct type, field))

int main(void)
{
	/* struct dm_ioctl */
	P("dm_ioctl.size", sizeof(struct dm_ioctl));
	OFF(dm_ioctl, version);
	OFF(dm_ioctl, data_size);
	OFF(dm_ioctl, data_start);
	OFF(dm_ioctl, target_count);
	OFF(dm_ioctl, open_count);
	OFF(dm_ioctl, flags);
	OFF(dm_ioctl, event_nr);
	OFF(dm_ioctl, padding);
	OFF(dm_ioctl, dev);
	OFF(dm_ioctl, name);
	OFF(dm_ioctl, uuid);
	OFF(dm_ioctl, data);
	P("dm_ioctl.dev.size", sizeof(((struct dm_ioctl *)0)->dev));
	P("dm_ioctl.name.size", sizeof(((struct dm_ioctl *)0)->name));
	P("dm_ioctl.uuid.size", sizeof(((struct dm_ioctl *)0)->uuid));
	P("dm_ioctl.data.size", sizeof(((struct dm_ioctl *)0)->data));

	/* struct dm_target_msg */
	P("dm_target_msg.size", sizeof(struct dm_target_msg));
	OFF(dm_target_msg, sector);
	OFF(dm_target_msg, message);

	/* struct dm_target_spec */
	P("dm_target_spec.size", sizeof(struct dm_target_spec));
	OFF(dm_target_spec, sector_start);
	OFF(dm_target_spec, length);
	OFF(dm_target_spec, status);
	OFF(dm_target_spec, next);
	OFF(dm_target_spec, target_type);
	P("DM_MAX_TYPE_NAME", DM_MAX_TYPE_NAME);
	P("DM_TABLE_STATUS", DM_TABLE_STATUS);
	P("DM_STATUS_TABLE_FLAG", DM_STATUS_TABLE_FLAG);
	P("DM_BUFFER_FULL_FLAG", DM_BUFFER_FULL_FLAG);

	/* device-mapper constants */
	P("DM_NAME_LEN", DM_NAME_LEN);
	P("DM_UUID_LEN", DM_UUID_LEN);
	P("DM_VERSION_MAJOR", DM_VERSION_MAJOR);
	P("DM_DEV_REMOVE", DM_DEV_REMOVE);
	P("DM_DEV_SUSPEND", DM_DEV_SUSPEND);
	P("DM_DEV_STATUS", DM_DEV_STATUS);
	P("DM_TARGET_MSG", DM_TARGET_MSG);
	P("DM_SUSPEND_FLAG", DM_SUSPEND_FLAG);
	P("DM_NOFLUSH_FLAG", DM_NOFLUSH_FLAG);
	P("DM_SECURE_DATA_FLAG", DM_SECURE_DATA_FLAG);

	/* MD */
	P("MISC_MAJOR", MISC_MAJOR);
	P("MD_MAJOR", MD_MAJOR);
	P("STOP_ARRAY", STOP_ARRAY);

	/* loop */
	P("LOOP_CLR_FD", LOOP_CLR_FD);

	/* NBD */
	P("NBD_DISCONNECT", NBD_DISCONNECT);
	P("NBD_CLEAR_SOCK", NBD_CLEAR_SOCK);

	/* iSCSI logout: the netlink protocol and its framing (the iSCSI structures are in
	 * the kernel's include/scsi/iscsi_if.h, which no uapi header has; see
	 * src/teardown/iscsi.rs) */
	P("NETLINK_ISCSI", NETLINK_ISCSI);
	P("nlmsghdr.size", sizeof(struct nlmsghdr));
	P("sockaddr_nl.size", sizeof(struct sockaddr_nl));

	/* watchdog */
	P("WDIOC_KEEPALIVE", WDIOC_KEEPALIVE);

	/* the new mount API (exitrd prepare) */
	P("FSOPEN_CLOEXEC", FSOPEN_CLOEXEC);
	P("FSCONFIG_SET_STRING", FSCONFIG_SET_STRING);
	P("FSCONFIG_CMD_CREATE", FSCONFIG_CMD_CREATE);
	P("FSMOUNT_CLOEXEC", FSMOUNT_CLOEXEC);
	P("MOUNT_ATTR_NOSUID", MOUNT_ATTR_NOSUID);
	P("MOUNT_ATTR_NODEV", MOUNT_ATTR_NODEV);
	P("MOVE_MOUNT_F_EMPTY_PATH", MOVE_MOUNT_F_EMPTY_PATH);
	P("SYS_fsopen", SYS_fsopen);
	P("SYS_fsconfig", SYS_fsconfig);
	P("SYS_fsmount", SYS_fsmount);
	P("SYS_move_mount", SYS_move_mount);

	return 0;
}
