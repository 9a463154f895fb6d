/*
 * harness/runtime.c - migfuzz's device runtime in C: the body of every C reproducer.
 *
 * The same runtime as harness/runtime.py (the stand-alone Python reproducer), ported
 * function by function: open VFIO devices (legacy group/container API, or an iommufd
 * cdev), replay a migration program op by op (v1: the migration region; v2:
 * VFIO_DEVICE_FEATURE and the data_fd; both: the PCI regions' registers and reopening the
 * device fd without a reset), print every answer, and evaluate the finding's claim on the
 * answer at its step. It judges nothing else.
 *
 * `migfuzz export --c` writes one file: a banner, `#define MF_GENERATED`, the generated
 * part (ioctl numbers, layouts and constants from harness/uapi.py and harness/runtime.py,
 * the program as a table of ops, the claim as a check code), then this file verbatim.
 * Compiled on its own (the tests do), this file includes that generated part from
 * "mf_generated.h" (fuzz.export.c_header() writes one).
 *
 * Every device call goes through the mf_sys_* functions below. Built with -DMF_SHIM they
 * are forwarded over the socket whose number is in $MF_SHIM_FD to a process that answers
 * as the kernel would (the tests host simulated devices there); otherwise they are the
 * system calls themselves.
 *
 * Exit codes (harness.runtime.EXIT_*): 1 the claimed defect showed up, 0 it did not,
 * 2 usage, 3 a device cannot be opened, 4 inconclusive (the claim cannot be judged from
 * user space, or a different problem showed up: a hang or an exception at another step).
 */
#ifndef MF_GENERATED
#include "mf_generated.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <sys/types.h>
#include <unistd.h>

/* ------------------------------------------------------------------------- the device layer */

/* Set when a simulated device raised an exception inside a call (MF_SHIM only). */
static int mf_raised;

#ifdef MF_SHIM

/*
 * The shim protocol: one request, one reply, native byte order.
 * request: struct mf_shim_req, then `len` bytes (a path, a buffer written or passed to an ioctl);
 * reply:   struct mf_shim_rep, then `len` bytes (data read, or the ioctl buffer as the call left it).
 * A reply's ret < 0 is a failed call with errno `err`; `raised` says the simulated device raised.
 * A hanging call is a reply that never comes.
 */
enum {
	MF_SHIM_OPEN = 1, MF_SHIM_IOCTL, MF_SHIM_IOCTL_VAL, MF_SHIM_READ, MF_SHIM_WRITE,
	MF_SHIM_PREAD, MF_SHIM_PWRITE, MF_SHIM_CLOSE, MF_SHIM_LSEEK, MF_SHIM_RACE, MF_SHIM_RACE_DONE,
};

struct mf_shim_req {
	uint32_t call;
	int32_t fd;
	uint64_t a;
	uint64_t b;
	uint32_t len;
	uint32_t pad;
};

struct mf_shim_rep {
	int64_t ret;
	int32_t err;
	uint32_t raised;
	uint32_t len;
	uint32_t pad;
};

_Static_assert(sizeof(struct mf_shim_req) == 32, "shim request layout");
_Static_assert(sizeof(struct mf_shim_rep) == 24, "shim reply layout");

/* Each thread has its own connection: the main thread $MF_SHIM_FD, a race's second thread
 * $MF_SHIM_FD2 (mf_sys_thread_start), so the two calls of a race reach the simulated kernel at
 * once and it can interleave them as the race's schedule says (mf_sys_race_begin). */
static _Thread_local int mf_shim_fd = -1;

static void mf_shim_lost(void)
{
	static const char msg[] = "shim: the connection to the simulated kernel is gone\n";

	if (write(2, msg, sizeof(msg) - 1) < 0)
		_exit(MF_EXIT_UNAVAILABLE);
	_exit(MF_EXIT_UNAVAILABLE);
}

static void mf_shim_send(const void *buf, size_t len)
{
	const unsigned char *p = buf;

	while (len) {
		ssize_t n = write(mf_shim_fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			mf_shim_lost();
		p += n;
		len -= (size_t)n;
	}
}

static void mf_shim_recv(void *buf, size_t len)
{
	unsigned char *p = buf;

	while (len) {
		ssize_t n = read(mf_shim_fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			mf_shim_lost();
		p += n;
		len -= (size_t)n;
	}
}

static long long mf_shim_call(uint32_t call, int fd, uint64_t a, uint64_t b, const void *out, size_t outlen,
			      void *in, size_t inlen)
{
	struct mf_shim_req req;
	struct mf_shim_rep rep;

	if (mf_shim_fd < 0) {
		const char *env = getenv("MF_SHIM_FD");

		if (!env) {
			fprintf(stderr, "built with MF_SHIM: set MF_SHIM_FD to the simulated kernel's socket\n");
			exit(MF_EXIT_UNAVAILABLE);
		}
		mf_shim_fd = atoi(env);
	}
	memset(&req, 0, sizeof(req));
	req.call = call;
	req.fd = fd;
	req.a = a;
	req.b = b;
	req.len = (uint32_t)outlen;
	mf_shim_send(&req, sizeof(req));
	if (outlen)
		mf_shim_send(out, outlen);
	mf_shim_recv(&rep, sizeof(rep));
	if (rep.len > inlen)
		mf_shim_lost();
	if (rep.len)
		mf_shim_recv(in, rep.len);
	if (rep.raised)
		mf_raised = 1;
	if (rep.ret < 0)
		errno = rep.err;
	return rep.ret;
}

static int mf_sys_open(const char *path, int flags)
{
	return (int)mf_shim_call(MF_SHIM_OPEN, -1, (uint64_t)flags, 0, path, strlen(path) + 1, NULL, 0);
}

/* An ioctl whose argument is a buffer of len bytes the kernel reads and may write. */
static int mf_sys_ioctl(int fd, unsigned long request, void *arg, size_t len)
{
	return (int)mf_shim_call(MF_SHIM_IOCTL, fd, request, 0, arg, len, arg, len);
}

/* An ioctl whose argument is a value. */
static int mf_sys_ioctl_val(int fd, unsigned long request, unsigned long value)
{
	return (int)mf_shim_call(MF_SHIM_IOCTL_VAL, fd, request, value, NULL, 0, NULL, 0);
}

static ssize_t mf_sys_read(int fd, void *buf, size_t n)
{
	return (ssize_t)mf_shim_call(MF_SHIM_READ, fd, n, 0, NULL, 0, buf, n);
}

static ssize_t mf_sys_write(int fd, const void *buf, size_t n)
{
	return (ssize_t)mf_shim_call(MF_SHIM_WRITE, fd, 0, 0, buf, n, NULL, 0);
}

static ssize_t mf_sys_pread(int fd, void *buf, size_t n, uint64_t offset)
{
	return (ssize_t)mf_shim_call(MF_SHIM_PREAD, fd, n, offset, NULL, 0, buf, n);
}

static ssize_t mf_sys_pwrite(int fd, const void *buf, size_t n, uint64_t offset)
{
	return (ssize_t)mf_shim_call(MF_SHIM_PWRITE, fd, 0, offset, buf, n, NULL, 0);
}

static int mf_sys_close(int fd)
{
	return (int)mf_shim_call(MF_SHIM_CLOSE, fd, 0, 0, NULL, 0, NULL, 0);
}

static long long mf_sys_lseek(int fd, long long offset, int whence)
{
	return mf_shim_call(MF_SHIM_LSEEK, fd, (uint64_t)offset, (uint64_t)whence, NULL, 0, NULL, 0);
}

/* A race's second thread talks to the simulated kernel over its own connection. */
static void mf_sys_thread_start(void)
{
	const char *env = getenv("MF_SHIM_FD2");

	if (!env) {
		fprintf(stderr, "built with MF_SHIM: set MF_SHIM_FD2 to a second socket for a race's second thread\n");
		exit(MF_EXIT_UNAVAILABLE);
	}
	mf_shim_fd = atoi(env);
}

/* The calls of the two threads on device fd `fd` (kinds: x | y << 8, enum mf_race_call) race at
 * interleaving `sched`: the simulated kernel runs them as the simulator does (harness/sim/core.py);
 * each thread says when its call is done. */
static void mf_sys_race_begin(int fd, uint32_t sched, uint32_t kinds)
{
	mf_shim_call(MF_SHIM_RACE, fd, sched, kinds, NULL, 0, NULL, 0);
}

static void mf_sys_race_done(void)
{
	mf_shim_call(MF_SHIM_RACE_DONE, -1, 0, 0, NULL, 0, NULL, 0);
}

#else /* the system calls */

static int mf_sys_open(const char *path, int flags)
{
	return open(path, flags);
}

static int mf_sys_ioctl(int fd, unsigned long request, void *arg, size_t len)
{
	(void)len;
	return ioctl(fd, request, arg);
}

static int mf_sys_ioctl_val(int fd, unsigned long request, unsigned long value)
{
	return ioctl(fd, request, value);
}

static ssize_t mf_sys_read(int fd, void *buf, size_t n)
{
	return read(fd, buf, n);
}

static ssize_t mf_sys_write(int fd, const void *buf, size_t n)
{
	return write(fd, buf, n);
}

static ssize_t mf_sys_pread(int fd, void *buf, size_t n, uint64_t offset)
{
	return pread(fd, buf, n, (off_t)offset);
}

static ssize_t mf_sys_pwrite(int fd, const void *buf, size_t n, uint64_t offset)
{
	return pwrite(fd, buf, n, (off_t)offset);
}

static int mf_sys_close(int fd)
{
	return close(fd);
}

static long long mf_sys_lseek(int fd, long long offset, int whence)
{
	return (long long)lseek(fd, (off_t)offset, whence);
}

/* A real kernel interleaves a race's calls as its scheduler will: nothing to tell it. */
static void mf_sys_thread_start(void)
{
}

static void mf_sys_race_begin(int fd, uint32_t sched, uint32_t kinds)
{
	(void)fd;
	(void)sched;
	(void)kinds;
}

static void mf_sys_race_done(void)
{
}

#endif /* MF_SHIM */

/* ------------------------------------------------------------------------- names */

static const char *mf_errname(int err)
{
	static char buf[32];

	switch (err) {
	case 0: return "success";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EINTR: return "EINTR";
	case EIO: return "EIO";
	case E2BIG: return "E2BIG";
	case EBADF: return "EBADF";
	case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST";
	case ENODEV: return "ENODEV";
	case EINVAL: return "EINVAL";
	case ENOTTY: return "ENOTTY";
	case ENOSPC: return "ENOSPC";
	case ESPIPE: return "ESPIPE";
	case ERANGE: return "ERANGE";
	case ENOMSG: return "ENOMSG";
	case ENOSYS: return "ENOSYS";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ETIMEDOUT: return "ETIMEDOUT";
	default:
		snprintf(buf, sizeof(buf), "%d", err);
		return buf;
	}
}

/* Abi.state_name: a v2 state's name, or a v1 device_state's. */
static const char *mf_state_name(long long state)
{
	static char buf[4][32];
	static int next;
	char *out = buf[next++ & 3];

	if (state < 0)
		return "?";
	if (MF_PROTO_V2) {
		if (state < MF_V2_STATE_NAMES_N)
			return mf_v2_state_names[state];
		snprintf(out, sizeof(buf[0]), "%lld", state);
		return out;
	}
	if (state < 8)
		return mf_v1_state_names[state & 7];
	snprintf(out, sizeof(buf[0]), "%#llx", state);
	return out;
}

/* ------------------------------------------------------------------------- raw VFIO access */

#define MF_MAX_FDS 64
#define MF_NBARS 6		/* VFIO_PCI_BAR0..5_REGION_INDEX */
#define MF_UART_TX 0		/* 16550 registers inside an mtty BAR: what activity writes */
#define MF_UART_SCR 7
#define MF_HOPS 64		/* capability chain entries walked at most */

/* An open VFIO device (harness.runtime.VfioDevice). */
struct mf_dev {
	char name[160];
	int fd;
	int owned[2];		/* container and group, or iommufd: closed after the device */
	int nowned;
	int protocol;		/* 2: VFIO_DEVICE_FEATURE migration; 1: a v1 migration region; 0: none */
	uint64_t flags;
	uint64_t region_size, region_offset;
	uint64_t bars[MF_NBARS];
	int nbars;
	int regions[MF_PCI_NUM_REGIONS];	/* the PCI regions (BARs, ROM, config) REGION_INFO describes */
	uint64_t reg_offset[MF_PCI_NUM_REGIONS];
	int data_fds[MF_MAX_FDS];	/* data_fds handed out and not yet closed */
	int ndata;
	/* how the device fd is got again (reopen): VFIO_GROUP_GET_DEVICE_FD with the name on
	 * group_fd, or open(path) and VFIO_DEVICE_BIND_IOMMUFD to iommufd */
	int group_fd, iommufd;
	char path[160];
};

struct mf_region {
	uint32_t flags;
	uint64_t size, offset;
	int migration;		/* capability type (REGION_TYPE_MIGRATION, REGION_SUBTYPE_MIGRATION) */
};

static int mf_ioctl(int fd, unsigned long request, void *arg, size_t len)
{
	return mf_sys_ioctl(fd, request, arg, len) < 0 ? errno : 0;
}

static int mf_reset(struct mf_dev *d)
{
	return mf_sys_ioctl_val(d->fd, MF_VFIO_DEVICE_RESET, 0) < 0 ? errno : 0;
}

/* The devices' tables of data_fds: the two threads of a race may change them at once. */
static pthread_mutex_t mf_fds_lock = PTHREAD_MUTEX_INITIALIZER;

static int mf_owns(const struct mf_dev *d, int fd)
{
	int i, owned = 0;

	pthread_mutex_lock(&mf_fds_lock);
	for (i = 0; i < d->ndata && !owned; i++)
		owned = d->data_fds[i] == fd;
	pthread_mutex_unlock(&mf_fds_lock);
	return owned;
}

static void mf_forget(struct mf_dev *d, int fd)
{
	int i, j;

	pthread_mutex_lock(&mf_fds_lock);
	for (i = j = 0; i < d->ndata; i++)
		if (d->data_fds[i] != fd)
			d->data_fds[j++] = d->data_fds[i];
	d->ndata = j;
	pthread_mutex_unlock(&mf_fds_lock);
}

/*
 * Raw VFIO_DEVICE_FEATURE. argsz < 0: the header plus the payload. The buffer is large enough
 * for both the payload and argsz, so a large fuzzed argsz never lets the kernel go past it.
 * The payload as the call left it is copied to out (outlen bytes at most).
 */
static int mf_feature(struct mf_dev *d, uint32_t flags, const void *payload, size_t plen, long long argsz,
		      void *out, size_t outlen)
{
	struct mf_vfio_device_feature hdr;
	size_t size = sizeof(hdr) + plen, want;
	unsigned char *buf;
	int err;

	if (argsz < 0)
		argsz = (long long)size;
	argsz &= 0xffffffffLL;
	want = (size_t)argsz < MF_MAX_READ ? (size_t)argsz : MF_MAX_READ;
	if (want > size)
		size = want;
	buf = calloc(1, size);
	if (!buf)
		return ENOMEM;
	hdr.argsz = (uint32_t)argsz;
	hdr.flags = flags;
	memcpy(buf, &hdr, sizeof(hdr));
	if (plen)
		memcpy(buf + sizeof(hdr), payload, plen);
	err = mf_ioctl(d->fd, MF_VFIO_DEVICE_FEATURE, buf, size);
	if (out) {
		size_t n = size - sizeof(hdr);

		memcpy(out, buf + sizeof(hdr), n < outlen ? n : outlen);
	}
	free(buf);
	return err;
}

static int mf_mig_state(struct mf_dev *d, uint32_t op, uint32_t state, struct mf_vfio_device_feature_mig_state *ms)
{
	ms->device_state = state;
	ms->data_fd = -1;
	return mf_feature(d, op | MF_FEATURE_MIG_DEVICE_STATE, ms, sizeof(*ms), -1, ms, sizeof(*ms));
}

static int mf_get_state(struct mf_dev *d, long long *state)
{
	struct mf_vfio_device_feature_mig_state ms;
	int err = mf_mig_state(d, MF_FEATURE_GET, 0, &ms);

	*state = err ? -1 : (long long)ms.device_state;
	return err;
}

static int mf_set_state(struct mf_dev *d, uint32_t state, int *fd)
{
	struct mf_vfio_device_feature_mig_state ms;
	int err = mf_mig_state(d, MF_FEATURE_SET, state, &ms);

	*fd = -1;
	if (err)
		return err;
	*fd = ms.data_fd;
	pthread_mutex_lock(&mf_fds_lock);
	if (ms.data_fd >= 0 && d->ndata < MF_MAX_FDS)
		d->data_fds[d->ndata++] = ms.data_fd;
	pthread_mutex_unlock(&mf_fds_lock);
	return 0;
}

static int mf_data_size(struct mf_dev *d, long long *size)
{
	uint64_t length = 0;	/* struct vfio_device_feature_mig_data_size: one u64 */
	int err = mf_feature(d, MF_FEATURE_GET | MF_FEATURE_MIG_DATA_SIZE, &length, sizeof(length), -1, &length,
			     sizeof(length));

	*size = err ? -1 : (long long)length;
	return err;
}

/* read(2) on a data_fd this device handed out; *got bytes. */
static int mf_read(struct mf_dev *d, int fd, unsigned char *buf, size_t n, size_t *got)
{
	ssize_t r;

	*got = 0;
	if (!mf_owns(d, fd))
		return EBADF;
	r = mf_sys_read(fd, buf, n < MF_MAX_READ ? n : MF_MAX_READ);
	if (r < 0)
		return errno;
	*got = (size_t)r;
	return 0;
}

static int mf_write(struct mf_dev *d, int fd, const unsigned char *data, size_t n, long long *done)
{
	ssize_t r;

	*done = 0;
	if (!mf_owns(d, fd))
		return EBADF;
	r = mf_sys_write(fd, data, n);
	if (r < 0)
		return errno;
	*done = r;
	return 0;
}

static int mf_seek(struct mf_dev *d, int fd)
{
	if (!mf_owns(d, fd))
		return EBADF;
	return mf_sys_lseek(fd, 0, SEEK_SET) < 0 ? errno : 0;
}

static int mf_precopy_info(struct mf_dev *d, int fd, uint64_t *initial, uint64_t *dirty)
{
	struct mf_vfio_precopy_info info;
	int err;

	*initial = *dirty = 0;
	if (!mf_owns(d, fd))
		return EBADF;
	memset(&info, 0, sizeof(info));
	info.argsz = sizeof(info);
	err = mf_ioctl(fd, MF_VFIO_MIG_GET_PRECOPY_INFO, &info, sizeof(info));
	if (err)
		return err;
	*initial = info.initial_bytes;
	*dirty = info.dirty_bytes;
	return 0;
}

static int mf_close(struct mf_dev *d, int fd)
{
	int err;

	if (!mf_owns(d, fd))
		return EBADF;
	err = mf_sys_close(fd) < 0 ? errno : 0;
	mf_forget(d, fd);	/* after: a racing call on it still reaches the kernel (which answers EBADF) */
	return err;
}

/* pread inside the v1 migration region; a span outside it: EINVAL without a syscall. */
static int mf_span_ok(const struct mf_dev *d, uint64_t offset, uint64_t size)
{
	return d->protocol == 1 && offset <= d->region_size && size <= d->region_size - offset;
}

static int mf_region_read(struct mf_dev *d, uint64_t offset, size_t size, unsigned char *buf, size_t *got)
{
	ssize_t r;

	*got = 0;
	if (!mf_span_ok(d, offset, size))
		return EINVAL;
	r = mf_sys_pread(d->fd, buf, size, d->region_offset + offset);
	if (r < 0)
		return errno;
	*got = (size_t)r;
	return 0;
}

static int mf_region_write(struct mf_dev *d, uint64_t offset, const unsigned char *data, size_t size)
{
	if (!mf_span_ok(d, offset, size))
		return EINVAL;
	return mf_sys_pwrite(d->fd, data, size, d->region_offset + offset) < 0 ? errno : 0;
}

/* pread size bytes at off of PCI region `region` (its registers); the offset is not bounded by
 * the region's size (harness.runtime.VfioDevice.reg_read). *got bytes. */
static int mf_reg_read(struct mf_dev *d, uint32_t region, uint64_t off, size_t size, unsigned char *buf, size_t *got)
{
	ssize_t r;

	*got = 0;
	if (region >= MF_PCI_NUM_REGIONS || !d->regions[region])
		return EINVAL;
	r = mf_sys_pread(d->fd, buf, size, d->reg_offset[region] + off);
	if (r < 0)
		return errno;
	*got = (size_t)r;
	return 0;
}

static int mf_reg_write(struct mf_dev *d, uint32_t region, uint64_t off, const unsigned char *data, size_t size,
			long long *n)
{
	ssize_t r;

	*n = 0;
	if (region >= MF_PCI_NUM_REGIONS || !d->regions[region])
		return EINVAL;
	r = mf_sys_pwrite(d->fd, data, size, d->reg_offset[region] + off);
	if (r < 0)
		return errno;
	*n = r;
	return 0;
}

/* A set of byte values: bit b of byte b / 8. */
typedef unsigned char mf_byteset[32];

static int mf_has(const mf_byteset set, unsigned char b)
{
	return set[b >> 3] >> (b & 7) & 1;
}

static void mf_add(mf_byteset set, const unsigned char *data, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		set[data[i] >> 3] |= (unsigned char)(1u << (data[i] & 7));
}

/*
 * Best effort, for UART-like devices such as mtty: while the device runs, write a
 * seed-derived byte to the scratch and the transmit register of every BAR. Errors are
 * ignored: activity is stimulus, not protocol. A transmitted byte the device took is added to
 * `entered` (mtty loops it back to its receive FIFO): the program put it in.
 */
static void mf_activity(struct mf_dev *d, uint32_t seed, mf_byteset entered)
{
	long long state;
	int port, i, running = 0;

	if (d->protocol != 2 || !d->nbars)
		return;
	if (mf_get_state(d, &state))
		return;
	for (i = 0; i < MF_V2_RUNNING_STATES_N; i++)
		running |= state == mf_v2_running_states[i];
	if (!running)
		return;
	for (port = 0; port < d->nbars; port++) {
		unsigned char value = (unsigned char)(seed + (uint32_t)port);
		unsigned char tx = value ^ 0x5a;

		(void)mf_sys_pwrite(d->fd, &value, 1, d->bars[port] + MF_UART_SCR);
		if (mf_sys_pwrite(d->fd, &tx, 1, d->bars[port] + MF_UART_TX) == 1)
			mf_add(entered, &tx, 1);
	}
}

/* GET_REGION_INFO for one index, asking again with the argsz the kernel wants when the
 * capability chain does not fit; walks the chain for the migration capability type. */
static int mf_region_info(struct mf_dev *d, uint32_t index, struct mf_region *out)
{
	struct mf_vfio_region_info info;
	uint32_t argsz = sizeof(info), at, seen[MF_HOPS];
	unsigned char *buf = NULL;
	int i, err, nseen = 0;

	memset(out, 0, sizeof(*out));
	for (i = 0; i < 2; i++) {
		free(buf);
		buf = calloc(1, argsz);
		if (!buf)
			return ENOMEM;
		memset(&info, 0, sizeof(info));
		info.argsz = argsz;
		info.index = index;
		memcpy(buf, &info, sizeof(info));
		err = mf_ioctl(d->fd, MF_VFIO_DEVICE_GET_REGION_INFO, buf, argsz);
		if (err) {
			free(buf);
			return err;
		}
		memcpy(&info, buf, sizeof(info));
		if (info.argsz <= argsz)
			break;
		argsz = info.argsz;
	}
	out->flags = info.flags;
	out->size = info.size;
	out->offset = info.offset;
	/* Offsets count from the start of vfio_region_info; outside the buffer, backwards
	 * or already visited: the walk ends (a malformed chain must not hang the reproducer). */
	at = info.flags & MF_REGION_INFO_FLAG_CAPS ? info.cap_offset : 0;
	while (at && nseen < MF_HOPS && at >= sizeof(info) && at + sizeof(struct mf_vfio_info_cap_header) <= argsz) {
		struct mf_vfio_info_cap_header head;

		for (i = 0; i < nseen; i++)
			if (seen[i] == at)
				break;
		if (i < nseen)
			break;
		seen[nseen++] = at;
		memcpy(&head, buf + at, sizeof(head));
		if (head.id == MF_REGION_INFO_CAP_TYPE && at + sizeof(struct mf_vfio_region_info_cap_type) <= argsz) {
			struct mf_vfio_region_info_cap_type type;

			memcpy(&type, buf + at, sizeof(type));
			if (type.type == MF_REGION_TYPE_MIGRATION && type.subtype == MF_REGION_SUBTYPE_MIGRATION)
				out->migration = 1;
		}
		at = head.next;
	}
	free(buf);
	return 0;
}

/* After opening: reset, the protocol (v2 feature, else a v1 region), the PCI regions (BARs too). */
static void mf_probe(struct mf_dev *d)
{
	struct mf_vfio_device_feature_migration flags;
	struct mf_vfio_device_info dinfo;
	struct mf_region region;
	uint32_t i;

	mf_reset(d);
	memset(&flags, 0, sizeof(flags));
	if (!mf_feature(d, MF_FEATURE_GET | MF_FEATURE_MIGRATION, &flags, sizeof(flags), -1, &flags, sizeof(flags))) {
		d->protocol = 2;
		d->flags = flags.flags;
	} else {
		memset(&dinfo, 0, sizeof(dinfo));
		dinfo.argsz = sizeof(dinfo);
		if (!mf_ioctl(d->fd, MF_VFIO_DEVICE_GET_INFO, &dinfo, sizeof(dinfo))) {
			for (i = MF_PCI_NUM_REGIONS; i < dinfo.num_regions; i++) {
				if (!mf_region_info(d, i, &region) && region.migration) {
					d->protocol = 1;
					d->region_size = region.size;
					d->region_offset = region.offset;
					break;
				}
			}
		}
	}
	for (i = 0; i < MF_PCI_NUM_REGIONS; i++) {
		/* size 0 too: a region the driver does not implement must refuse access */
		if (!mf_region_info(d, i, &region)) {
			d->regions[i] = 1;
			d->reg_offset[i] = region.offset;
			if (region.size && i < MF_NBARS)
				d->bars[d->nbars++] = region.offset;
		}
	}
}

static void mf_open_failed(const char *what, int err)
{
	fprintf(stderr, "cannot open the device: %s: %s (%s)\n", what, strerror(err), mf_errname(err));
}

/* Two devices of one group share its container and group fds. */
static struct {
	int group, container, group_fd;
} mf_groups[2];
static int mf_ngroups;

/* Legacy API: /dev/vfio/vfio + /dev/vfio/GROUP, SET_CONTAINER, SET_IOMMU (type1v2, else
 * type1: mdev groups are emulated), GROUP_GET_DEVICE_FD with the device's name. */
static int mf_open_group(struct mf_dev *d, int group, const char *name)
{
	struct mf_vfio_group_status status;
	int container = -1, group_fd = -1, version, err, i;
	char path[64], what[200];

	snprintf(d->name, sizeof(d->name), "%s", name);
	for (i = 0; i < mf_ngroups; i++) {
		if (mf_groups[i].group == group) {
			container = mf_groups[i].container;
			group_fd = mf_groups[i].group_fd;
		}
	}
	if (group_fd < 0) {
		container = mf_sys_open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
		if (container < 0) {
			mf_open_failed("/dev/vfio/vfio", errno);
			return -1;
		}
		d->owned[d->nowned++] = container;
		version = mf_sys_ioctl_val(container, MF_VFIO_GET_API_VERSION, 0);
		if (version < 0) {
			mf_open_failed("VFIO_GET_API_VERSION", errno);
			return -1;
		}
		if (version != MF_VFIO_API_VERSION) {
			fprintf(stderr, "cannot open the device: VFIO API version %d, expected %d\n", version,
				MF_VFIO_API_VERSION);
			return -1;
		}
		snprintf(path, sizeof(path), "/dev/vfio/%d", group);
		group_fd = mf_sys_open(path, O_RDWR | O_CLOEXEC);
		if (group_fd < 0) {
			mf_open_failed(path, errno);
			return -1;
		}
		d->owned[d->nowned++] = group_fd;
		memset(&status, 0, sizeof(status));
		status.argsz = sizeof(status);
		err = mf_ioctl(group_fd, MF_VFIO_GROUP_GET_STATUS, &status, sizeof(status));
		if (err) {
			mf_open_failed("VFIO_GROUP_GET_STATUS", err);
			return -1;
		}
		if (!(status.flags & MF_GROUP_FLAGS_VIABLE)) {
			fprintf(stderr, "cannot open the device: group %d is not viable "
				"(a device in it is bound to a host driver)\n", group);
			return -1;
		}
		err = mf_ioctl(group_fd, MF_VFIO_GROUP_SET_CONTAINER, &container, sizeof(container));
		if (err) {
			mf_open_failed("VFIO_GROUP_SET_CONTAINER", err);
			return -1;
		}
		err = mf_sys_ioctl_val(container, MF_VFIO_SET_IOMMU, MF_VFIO_TYPE1v2_IOMMU) < 0 ? errno : 0;
		if (err)
			err = mf_sys_ioctl_val(container, MF_VFIO_SET_IOMMU, MF_VFIO_TYPE1_IOMMU) < 0 ? errno : 0;
		if (err) {
			mf_open_failed("VFIO_SET_IOMMU", err);
			return -1;
		}
		if (mf_ngroups < 2) {
			mf_groups[mf_ngroups].group = group;
			mf_groups[mf_ngroups].container = container;
			mf_groups[mf_ngroups++].group_fd = group_fd;
		}
	}
	d->group_fd = group_fd;
	d->fd = mf_sys_ioctl(group_fd, MF_VFIO_GROUP_GET_DEVICE_FD, (void *)name, strlen(name) + 1);
	if (d->fd < 0) {
		snprintf(what, sizeof(what), "VFIO_GROUP_GET_DEVICE_FD %s", name);
		mf_open_failed(what, errno);
		return -1;
	}
	mf_probe(d);
	return 0;
}

static int mf_bind(int fd, int iommufd)
{
	struct mf_vfio_device_bind_iommufd bind;

	memset(&bind, 0, sizeof(bind));
	bind.argsz = sizeof(bind);
	bind.iommufd = iommufd;
	return mf_ioctl(fd, MF_VFIO_DEVICE_BIND_IOMMUFD, &bind, sizeof(bind));
}

/* iommufd: /dev/vfio/devices/vfioN bound to a new iommufd (no IOAS: migration does no DMA). */
static int mf_open_cdev(struct mf_dev *d, const char *cdev)
{
	int fd, iommufd, err;

	if (cdev[0] == '/')
		snprintf(d->path, sizeof(d->path), "%s", cdev);
	else
		snprintf(d->path, sizeof(d->path), "/dev/vfio/devices/%s", cdev);
	snprintf(d->name, sizeof(d->name), "%s", strrchr(d->path, '/') + 1);
	fd = mf_sys_open(d->path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		mf_open_failed(d->path, errno);
		return -1;
	}
	d->fd = fd;
	iommufd = mf_sys_open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (iommufd < 0) {
		mf_open_failed("/dev/iommu", errno);
		return -1;
	}
	d->owned[d->nowned++] = iommufd;
	d->iommufd = iommufd;
	err = mf_bind(fd, iommufd);
	if (err) {
		mf_open_failed("VFIO_DEVICE_BIND_IOMMUFD", err);
		return -1;
	}
	mf_probe(d);
	return 0;
}

/* The device fd got again the way it was got (the opener of harness.runtime): errno, *fd. */
static int mf_get_device_fd(struct mf_dev *d, int *fd)
{
	int err;

	if (d->group_fd >= 0) {
		*fd = mf_sys_ioctl(d->group_fd, MF_VFIO_GROUP_GET_DEVICE_FD, d->name, strlen(d->name) + 1);
		return *fd < 0 ? errno : 0;
	}
	if (d->iommufd < 0) {
		*fd = -1;
		return ENODEV;
	}
	*fd = mf_sys_open(d->path, O_RDWR | O_CLOEXEC);
	if (*fd < 0)
		return errno;
	err = mf_bind(*fd, d->iommufd);
	if (err) {
		mf_sys_close(*fd);
		*fd = -1;
	}
	return err;
}

/* Close every data_fd and the device fd, and get the device fd again the way it was got,
 * without VFIO_DEVICE_RESET (harness.runtime.VfioDevice.reopen). */
static int mf_reopen(struct mf_dev *d)
{
	int fds[MF_MAX_FDS], n, i, j, fd, err;

	pthread_mutex_lock(&mf_fds_lock);
	for (i = 1; i < d->ndata; i++)	/* in the order of their numbers, as the Python runtime */
		for (j = i; j > 0 && d->data_fds[j - 1] > d->data_fds[j]; j--) {
			fd = d->data_fds[j];
			d->data_fds[j] = d->data_fds[j - 1];
			d->data_fds[j - 1] = fd;
		}
	n = d->ndata;
	memcpy(fds, d->data_fds, sizeof(int) * (size_t)n);
	pthread_mutex_unlock(&mf_fds_lock);
	for (i = 0; i < n; i++) {	/* closed, then forgotten (mf_close) */
		mf_sys_close(fds[i]);
		mf_forget(d, fds[i]);
	}
	if (d->fd >= 0)
		mf_sys_close(d->fd);
	err = mf_get_device_fd(d, &fd);
	d->fd = err ? -1 : fd;
	return err;
}

/* Close every data_fd, reset, close the device, then its group/container/iommufd. */
static void mf_close_device(struct mf_dev *d)
{
	int i;

	if (d->fd >= 0) {
		while (d->ndata)
			mf_close(d, d->data_fds[0]);
		mf_reset(d);
		mf_sys_close(d->fd);
		d->fd = -1;
	}
	for (i = d->nowned - 1; i >= 0; i--)
		mf_sys_close(d->owned[i]);
	d->nowned = 0;
}

/* ------------------------------------------------------------------------- transport */

/* How a transfer cuts a stream (harness.runtime.segments): seg 0 one write, < MF_SEG_RANDOM
 * pieces of seg bytes, else pieces of 1..MF_SEG_RANDOM_MAX bytes from xorshift32 seeded by seg. */
struct mf_seg {
	uint32_t seg, x;
};

static void mf_seg_init(struct mf_seg *s, uint32_t seg)
{
	s->seg = seg;
	s->x = seg * 2654435761u + 1u;
	if (!s->x)
		s->x = 1;
}

static size_t mf_seg_next(struct mf_seg *s, size_t left)
{
	size_t n;

	if (s->seg == 0)
		return left;
	if (s->seg < MF_SEG_RANDOM) {
		n = s->seg;
	} else {
		s->x ^= s->x << 13;
		s->x ^= s->x >> 17;
		s->x ^= s->x << 5;
		n = 1 + s->x % MF_SEG_RANDOM_MAX;
	}
	return n < left ? n : left;
}

/* A growable byte buffer (the captured stream). */
struct mf_buf {
	unsigned char *p;
	size_t len, size;
};

static void mf_buf_insert(struct mf_buf *b, size_t at, const unsigned char *data, size_t n)
{
	if (b->len + n > b->size) {
		size_t size = b->size ? b->size : 4096;
		unsigned char *p;

		while (size < b->len + n)
			size *= 2;
		p = realloc(b->p, size);
		if (!p) {
			fprintf(stderr, "out of memory\n");
			exit(MF_EXIT_INCONCLUSIVE);
		}
		b->p = p;
		b->size = size;
	}
	memmove(b->p + at + n, b->p + at, b->len - at);
	memcpy(b->p + at, data, n);
	b->len += n;
}

static void mf_buf_delete(struct mf_buf *b, size_t at, size_t n)
{
	if (at >= b->len)
		return;
	if (n > b->len - at)
		n = b->len - at;
	memmove(b->p + at, b->p + at + n, b->len - at - n);
	b->len -= n;
}

/* CRC-32 of n bytes (IEEE 802.3, reflected: zlib's crc32). */
static uint32_t mf_crc32(const unsigned char *p, size_t n)
{
	uint32_t crc = 0xffffffffu;
	size_t i;
	int k;

	for (i = 0; i < n; i++) {
		crc ^= p[i];
		for (k = 0; k < 8; k++)
			crc = crc >> 1 ^ (0xedb88320u & (0u - (crc & 1u)));
	}
	return ~crc;
}

/* Recompute checksum fix in place: its field starts at bytes before the end and covers every
 * byte before it; nothing happens if it does not fit (harness.runtime.fix_checksum). */
static void mf_fix_checksum(struct mf_buf *cap, int fix, uint32_t at)
{
	size_t pos, i, width = 4;
	uint64_t value = 0;
	int big = fix == MF_FIX_CRC32BE || fix == MF_FIX_SUM16BE || fix == MF_FIX_SUM32BE;

	if (fix == MF_FIX_NONE || at > cap->len)
		return;
	pos = cap->len - at;
	if (fix == MF_FIX_CRC32 || fix == MF_FIX_CRC32BE) {
		value = mf_crc32(cap->p, pos);
	} else {
		width = fix == MF_FIX_SUM8 ? 1 : fix == MF_FIX_SUM16 || fix == MF_FIX_SUM16BE ? 2 : 4;
		for (i = 0; i < pos; i++)
			value += cap->p[i];
		value &= (1ULL << (8 * width)) - 1;
	}
	if (at < width)
		return;
	for (i = 0; i < width; i++)
		cap->p[pos + i] = (unsigned char)(value >> (8 * (big ? width - 1 - i : i)));
}

/* Damage a captured stream in place, as transport would (harness.runtime.mangle): set and add
 * change the little-endian field of width bytes at offset arg, then fix its checksum. */
static void mf_mangle(struct mf_buf *cap, int kind, uint32_t arg, uint32_t width, long long value, int fix,
		      uint32_t at)
{
	size_t n = cap->len, chunk = MF_MANGLE_CHUNK, nchunks, k, i;
	unsigned char tmp[2 * MF_MANGLE_CHUNK];

	if (!n)
		return;
	if (kind == MF_MANGLE_SET || kind == MF_MANGLE_ADD) {
		size_t pos = arg % n, span = width < n - pos ? width : n - pos;
		uint64_t v = (uint64_t)value, old = 0;

		if (kind == MF_MANGLE_ADD) {
			for (i = 0; i < span; i++)
				old |= (uint64_t)cap->p[pos + i] << (8 * i);
			v += old;
		}
		for (i = 0; i < span; i++)
			cap->p[pos + i] = (unsigned char)(v >> (8 * i));
		mf_fix_checksum(cap, fix, at);
		return;
	}
	nchunks = (n + chunk - 1) / chunk;
	k = arg % nchunks;
	switch (kind) {
	case MF_MANGLE_TRUNCATE:
		cap->len = n - 1 - arg % n;
		break;
	case MF_MANGLE_EXTEND:
		for (i = 0; i < 1 + arg % 16; i++) {
			unsigned char byte = (unsigned char)((arg + i) & 0xff);

			mf_buf_insert(cap, cap->len, &byte, 1);
		}
		break;
	case MF_MANGLE_FLIP:
		cap->p[(arg >> 3) % n] ^= (unsigned char)(1u << (arg & 7));
		break;
	case MF_MANGLE_DROP:
		mf_buf_delete(cap, k * chunk, chunk);
		break;
	case MF_MANGLE_DUP: {
		size_t len = n - k * chunk < chunk ? n - k * chunk : chunk;

		memcpy(tmp, cap->p + k * chunk, len);
		mf_buf_insert(cap, k * chunk, tmp, len);
		break;
	}
	case MF_MANGLE_SWAP:
		if (k + 1 < nchunks) {
			size_t a = k * chunk, b = a + chunk, end = b + chunk < n ? b + chunk : n;

			memcpy(tmp, cap->p + b, end - b);
			memcpy(tmp + (end - b), cap->p + a, chunk);
			memcpy(cap->p + a, tmp, end - a);
		}
		break;
	}
}

/* ------------------------------------------------------------------------- procedures */

/* The stage of a v1 saving iteration at which it stopped (harness.runtime.V1_*). */
enum { MF_V1_DONE, MF_V1_PENDING, MF_V1_OFFSET, MF_V1_SIZE, MF_V1_DATA, MF_V1_MORE };

/* One v1 region field read with its native width; *have 0 when the read came back short. */
static int mf_v1_read_field(struct mf_dev *d, int field, uint64_t *value, int *have)
{
	unsigned char raw[8];
	size_t got, size = (size_t)mf_v1_fields[field].size, i;
	int err = mf_region_read(d, (uint64_t)mf_v1_fields[field].offset, size, raw, &got);

	*value = 0;
	*have = !err && got == size;
	if (*have)
		for (i = size; i-- > 0;)
			*value = *value << 8 | raw[i];
	return err;
}

static int mf_v1_write_field(struct mf_dev *d, int field, uint64_t value)
{
	unsigned char raw[8];
	size_t size = (size_t)mf_v1_fields[field].size, i;

	for (i = 0; i < size; i++)
		raw[i] = (unsigned char)(value >> (8 * i));
	return mf_region_write(d, (uint64_t)mf_v1_fields[field].offset, raw, size);
}

struct mf_iteration {
	int stage, err;
	int have_pending;	/* pending_bytes was read whole */
	uint64_t pending, offset, size;
	unsigned char *data;	/* malloc'ed, size bytes read (V1_MORE) */
	size_t len;
};

/* One iteration of the v1 saving sequence (harness.runtime.v1_save_iteration). */
static void mf_v1_save_iteration(struct mf_dev *d, int saving, struct mf_iteration *it)
{
	int have;

	memset(it, 0, sizeof(*it));
	it->err = mf_v1_read_field(d, MF_V1_FIELD_PENDING_BYTES, &it->pending, &have);
	if (it->err) {
		it->stage = MF_V1_PENDING;
		return;
	}
	it->have_pending = have;
	if (!saving || (have && it->pending == 0)) {
		it->stage = MF_V1_DONE;
		return;
	}
	it->err = mf_v1_read_field(d, MF_V1_FIELD_DATA_OFFSET, &it->offset, &have);
	if (it->err) {
		it->stage = MF_V1_OFFSET;
		return;
	}
	it->err = mf_v1_read_field(d, MF_V1_FIELD_DATA_SIZE, &it->size, &have);
	if (it->err) {
		it->stage = MF_V1_SIZE;
		return;
	}
	it->stage = MF_V1_MORE;
	if (!it->size)
		return;
	if (!mf_span_ok(d, it->offset, it->size)) {
		it->stage = MF_V1_DATA;
		it->err = EINVAL;
		return;
	}
	it->data = malloc(it->size);
	it->err = it->data ? mf_region_read(d, it->offset, it->size, it->data, &it->len) : ENOMEM;
	if (it->err)
		it->stage = MF_V1_DATA;
}

/* One v1 resuming step (harness.runtime.v1_write_chunk): read data_offset, write as much of
 * the piece as the window holds, then data_size. A data_offset outside [header, region)
 * takes nothing and writes nothing (*taken 0, no error). */
static int mf_v1_write_chunk(struct mf_dev *d, const unsigned char *piece, size_t len, uint64_t *offset,
			     size_t *taken)
{
	int have, err = mf_v1_read_field(d, MF_V1_FIELD_DATA_OFFSET, offset, &have);
	size_t chunk;

	*taken = 0;
	if (err || !have)
		return err ? err : EIO;
	if (*offset < MF_V1_HEADER_SIZE || *offset >= d->region_size)
		return 0;
	chunk = len < d->region_size - *offset ? len : (size_t)(d->region_size - *offset);
	err = mf_region_write(d, *offset, piece, chunk);
	if (!err)
		err = mf_v1_write_field(d, MF_V1_FIELD_DATA_SIZE, chunk);
	if (!err)
		*taken = chunk;
	return err;
}

/* Write a stream to a resuming data_fd in the pieces of mf_seg (harness.runtime.write_all):
 * each piece until the device took all of it, EINTR retried MF_EINTR_RETRIES times. */
static int mf_write_all(struct mf_dev *d, int fd, const unsigned char *data, size_t len, uint32_t seg,
			long long *done, int *stalled)
{
	struct mf_seg s;
	size_t pos = 0;

	*done = 0;
	*stalled = 0;
	mf_seg_init(&s, seg);
	while (pos < len) {
		size_t piece = mf_seg_next(&s, len - pos), off = 0;

		while (off < piece) {
			long long n = 0;
			int err = 0, tries;

			for (tries = 0; tries < MF_EINTR_RETRIES; tries++) {
				err = mf_write(d, fd, data + pos + off, piece - off, &n);
				if (err != EINTR)
					break;
			}
			if (err)
				return err;
			if (n <= 0) {
				*stalled = 1;
				return 0;
			}
			off += (size_t)n;
			*done += n;
		}
		pos += piece;
	}
	return 0;
}

/* ------------------------------------------------------------------------- the replay */

/* What the replay knows about one device (harness.runtime.View). */
struct mf_view {
	struct mf_dev *dev;
	int fds[MF_MAX_FDS];	/* data_fds, newest last */
	int saving[MF_MAX_FDS];
	int nfds;
	long long state;
	struct mf_buf cap;	/* the captured stream */
	int ended;
	long long pc_expect, pc_initial;
	mf_byteset entered;	/* byte values the program put into the device (registers, resume data) */
	int pending_seen;	/* pending_last holds the pending_bytes last read in v1 stop-and-copy */
	uint64_t pending_last;
};

#define MF_MAX_REG 8		/* the widest register access (fuzz.program.SIZES) */

/* The answer of one op: what the claim is evaluated on. */
struct mf_answer {
	int skipped;		/* nothing to act on */
	int err;		/* errno of the op */
	int gerr;		/* errno of reading the state back */
	int fd;			/* data_fd a SET returned */
	long long state;	/* state read back */
	long long len;		/* bytes read or written */
	long long total;
	long long value;	/* a v1 field's value */
	unsigned char data[MF_MAX_REG];	/* bytes a register read handed out (dlen of them) */
	size_t dlen;
	mf_byteset entered;	/* the device's entered set when it handed them out */
	int hang, precopy_overrun, initial_grew, data_after_end, window_outside, stalled, exception;
	int value_changed, pending_grew;
	int kernel_address;	/* stream bytes read had the shape of a kernel address */
	int have_race;		/* a race ran: its outcome (harness.runtime.race_outcome) */
	long long race_outcome;
};

static struct mf_view mf_views[2];

static void mf_answer_init(struct mf_answer *r)
{
	memset(r, 0, sizeof(*r));
	r->fd = -1;
	r->state = -1;
}

static int mf_slot(const struct mf_view *v, uint32_t index)
{
	return index < (uint32_t)v->nfds ? v->fds[v->nfds - 1 - (int)index] : -1;
}

static int mf_is_saving(const struct mf_view *v, int fd)
{
	int i;

	for (i = v->nfds - 1; i >= 0; i--)
		if (v->fds[i] == fd)
			return v->saving[i];
	return 0;
}

static void mf_new_capture(struct mf_view *v)
{
	v->cap.len = 0;
	v->ended = 0;
	v->pc_expect = v->pc_initial = -1;
}

static int mf_in(long long value, const long long *set, int n)
{
	int i;

	for (i = 0; i < n; i++)
		if (value == set[i])
			return 1;
	return 0;
}

/* Book a pending_bytes read (in a saving iteration or bare); 1 when it grew in stop-and-copy. */
static int mf_pending(struct mf_view *v, uint64_t pending, struct mf_answer *r)
{
	if (v->state != MF_V1_SAVING)
		return 0;
	if (v->pending_seen && v->pending_last < pending) {
		r->pending_grew = 1;
		return 1;
	}
	v->pending_seen = 1;
	v->pending_last = pending;
	return 0;
}

static void mf_no_slot(struct mf_answer *r)
{
	r->skipped = 1;
}

/* ---- both protocols */

static void mf_op_activity(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	(void)r;
	mf_activity(v->dev, op->b, v->entered);
	v->pc_expect = -1;
	printf("       activity seed=%u\n", op->b);
}

static void mf_op_mangle(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	(void)r;
	mf_mangle(&v->cap, op->kind, op->kind == MF_MANGLE_SET || op->kind == MF_MANGLE_ADD ? op->off : op->b,
		  op->width, op->value, op->fix, op->at);
	printf("       capture now %zu bytes\n", v->cap.len);
}

static int mf_read_state(struct mf_view *v, long long *state);

static void mf_op_reopen(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	(void)op;
	r->err = mf_reopen(v->dev);
	if (MF_PROTO_V2) {
		r->gerr = mf_get_state(v->dev, &r->state);
		v->state = MF_V2_RUNNING;
	} else {
		r->gerr = mf_read_state(v, &r->state);
		v->state = MF_V1_RUNNING;
	}
	v->nfds = 0;
	v->pending_seen = 0;
	v->pc_expect = v->pc_initial = -1;
	printf("       reopen -> %s; state %s\n", mf_errname(r->err), mf_state_name(r->state));
}

static void mf_print_hex(const unsigned char *data, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		printf("%02x", data[i]);
}

static void mf_op_rdreg(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	size_t got;

	r->err = mf_reg_read(v->dev, op->region, op->off, op->size, r->data, &got);
	r->dlen = got;
	r->len = (long long)got;
	memcpy(r->entered, v->entered, sizeof(r->entered));
	printf("       region %u +0x%x: read %u -> %s ", op->region, op->off, op->size, mf_errname(r->err));
	mf_print_hex(r->data, r->dlen);
	printf("\n");
}

static void mf_op_wrreg(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	unsigned char data[MF_MAX_REG];
	uint32_t i;

	for (i = 0; i < op->size; i++)	/* the low size bytes of the value, little endian */
		data[i] = (unsigned char)(i < 4 ? op->b >> (8 * i) : 0);
	r->err = mf_reg_write(v->dev, op->region, op->off, data, op->size, &r->len);
	if (!r->err)
		mf_add(v->entered, data, op->size);
	printf("       region %u +0x%x: write ", op->region, op->off);
	mf_print_hex(data, op->size);
	printf(" -> %s\n", mf_errname(r->err));
}

/* ---- v2 */

static void mf_v2_reset(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	(void)op;
	r->err = mf_reset(v->dev);
	r->gerr = mf_get_state(v->dev, &r->state);
	if (!r->gerr)
		v->state = r->state;
	v->pc_expect = v->pc_initial = -1;
	printf("       reset -> %s; state %s\n", mf_errname(r->err), mf_state_name(r->state));
}

static void mf_v2_set(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	uint32_t new = op->b;

	r->err = mf_set_state(v->dev, new, &r->fd);
	r->gerr = mf_get_state(v->dev, &r->state);
	if (r->fd >= 0 && v->nfds < MF_MAX_FDS) {
		v->fds[v->nfds] = r->fd;
		v->saving[v->nfds++] = new != MF_V2_RESUMING;
		if (new != MF_V2_RESUMING)
			mf_new_capture(v);
	}
	if (!r->err || (!r->gerr && r->state != v->state))
		v->pc_expect = -1;
	if (!r->gerr)
		v->state = r->state;
	printf("       SET %s -> %s, data_fd %d; GET %s\n", mf_state_name(new), mf_errname(r->err), r->fd,
	       mf_state_name(r->state));
}

static void mf_v2_get(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	(void)op;
	r->err = r->gerr = mf_get_state(v->dev, &r->state);
	printf("       GET -> %s %s\n", mf_errname(r->err), mf_state_name(r->state));
}

static int mf_kernel_addresses(const unsigned char *data, size_t len, const mf_byteset entered, size_t *at,
			       int room);

/* Flag a kernel address in stream bytes just read, with the capture's last 7 before them (windows
 * across reads), as the fuzzer's oracle looks for them (harness.runtime.stream_leak). Only
 * flagged: the replay goes on reading where the fuzzer (no stream checks in its profile) would. */
static void mf_stream_leak(const struct mf_view *v, const unsigned char *data, size_t got, struct mf_answer *r)
{
	size_t tail = v->cap.len < 7 ? v->cap.len : 7;
	unsigned char *buf;

	if (!got || !memchr(data, 0xff, got))
		return;
	buf = malloc(tail + got);
	if (!buf) {
		fprintf(stderr, "out of memory\n");
		exit(MF_EXIT_INCONCLUSIVE);
	}
	if (tail)
		memcpy(buf, v->cap.p + v->cap.len - tail, tail);
	memcpy(buf + tail, data, got);
	if (mf_kernel_addresses(buf, tail + got, v->entered, NULL, 0))
		r->kernel_address = 1;
	free(buf);
}

/* Book one read's answer; 1 when it ends a drain (an error, the end, a defect seen). */
static int mf_take(struct mf_view *v, struct mf_answer *r, size_t n, int err, const unsigned char *data, size_t got)
{
	r->err = err;
	r->len = (long long)got;
	r->total += (long long)got;
	if (err)
		return err != EINTR;
	if (got) {
		if (v->ended) {
			r->data_after_end = 1;
			return 1;
		}
		mf_stream_leak(v, data, got, r);
		mf_buf_insert(&v->cap, v->cap.len, data, got);
		if (v->pc_expect >= 0) {
			v->pc_expect -= (long long)got;
			if (v->pc_expect < 0) {
				r->precopy_overrun = 1;
				return 1;
			}
		}
		return 0;
	}
	if (v->state == MF_V2_STOP_COPY && n > 0)
		v->ended = 1;	/* read(fd, buf, 0) returning 0 is not the end of the stream */
	return n > 0;
}

static unsigned char mf_iobuf[MF_MAX_READ];

static void mf_v2_read(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	int fd = mf_slot(v, op->a);
	size_t got;
	int err;

	if (fd < 0) {
		mf_no_slot(r);
		return;
	}
	err = mf_read(v->dev, fd, mf_iobuf, op->b, &got);
	mf_take(v, r, op->b, err, mf_iobuf, got);
	printf("       read fd %d n=%u -> %s, %lld bytes\n", fd, op->b, mf_errname(r->err), r->len);
}

static void mf_v2_drain(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	int fd = mf_slot(v, op->a), i, err;
	size_t got;

	if (fd < 0) {
		mf_no_slot(r);
		return;
	}
	for (i = 0; i < MF_DRAIN_LIMIT; i++) {
		err = mf_read(v->dev, fd, mf_iobuf, MF_DRAIN_CHUNK, &got);
		if (mf_take(v, r, MF_DRAIN_CHUNK, err, mf_iobuf, got))
			break;
	}
	if (i == MF_DRAIN_LIMIT)
		r->hang = 1;
	printf("       drain fd %d -> %lld bytes, then %s%s\n", fd, r->total, r->err ? mf_errname(r->err) : "end",
	       r->hang ? " (the stream never ended)" : "");
}

static void mf_v2_write(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	int fd = mf_slot(v, op->a);

	if (fd < 0) {
		mf_no_slot(r);
		return;
	}
	r->err = mf_write(v->dev, fd, op->data, op->len, &r->len);
	if (!r->err && r->len > 0)
		mf_add(v->entered, op->data, (size_t)r->len < op->len ? (size_t)r->len : op->len);
	printf("       write fd %d %u bytes -> %s, %lld\n", fd, op->len, mf_errname(r->err), r->len);
}

static void mf_v2_close(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	int fd = mf_slot(v, op->a), i;

	if (fd < 0) {
		mf_no_slot(r);
		return;
	}
	r->err = mf_close(v->dev, fd);
	for (i = 0; i < v->nfds && v->fds[i] != fd; i++)
		;
	for (; i + 1 < v->nfds; i++) {
		v->fds[i] = v->fds[i + 1];
		v->saving[i] = v->saving[i + 1];
	}
	v->nfds--;
	printf("       close fd %d -> %s\n", fd, mf_errname(r->err));
}

static void mf_v2_seek(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	int fd = mf_slot(v, op->a);

	if (fd < 0) {
		mf_no_slot(r);
		return;
	}
	r->err = mf_seek(v->dev, fd);
	printf("       lseek fd %d -> %s\n", fd, mf_errname(r->err));
}

static void mf_v2_precopy(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	int fd = mf_slot(v, op->a);
	uint64_t initial, dirty;

	if (fd < 0) {
		mf_no_slot(r);
		return;
	}
	r->err = mf_precopy_info(v->dev, fd, &initial, &dirty);
	printf("       PRECOPY_INFO fd %d -> %s, initial %llu, dirty %llu\n", fd, mf_errname(r->err),
	       (unsigned long long)initial, (unsigned long long)dirty);
	if (!r->err) {
		if (v->pc_initial >= 0 && (long long)initial > v->pc_initial)
			r->initial_grew = 1;
		v->pc_initial = (long long)initial;
		v->pc_expect = (long long)(initial + dirty);
	}
}

static void mf_v2_datasize(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	long long size;

	(void)op;
	r->err = mf_data_size(v->dev, &size);
	printf("       MIG_DATA_SIZE -> %s, %lld\n", mf_errname(r->err), size);
}

static void mf_v2_feature(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	struct mf_vfio_device_feature_mig_state ms;

	/* a SET carries the current state, so a framing test never moves the device */
	ms.device_state = (uint32_t)(v->state < 0 ? 0 : v->state);
	ms.data_fd = -1;
	r->err = mf_feature(v->dev, op->b, &ms, sizeof(ms), (long long)op->a, NULL, 0);
	printf("       FEATURE flags %#x argsz %u -> %s\n", op->b, op->a, mf_errname(r->err));
}

static void mf_v2_transfer(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	struct mf_view *dst = &mf_views[op->a];
	int fd = mf_slot(dst, 0);

	if (fd < 0 || mf_is_saving(dst, fd) || dst->state != MF_V2_RESUMING || !v->cap.len) {
		mf_no_slot(r);
		return;
	}
	r->err = mf_write_all(dst->dev, fd, v->cap.p, v->cap.len, op->b, &r->len, &r->stalled);
	mf_add(dst->entered, v->cap.p, (size_t)r->len < v->cap.len ? (size_t)r->len : v->cap.len);
	printf("       transfer of %zu bytes -> %s after %lld bytes%s\n", v->cap.len, mf_errname(r->err), r->len,
	       r->stalled ? " (a write made no progress)" : "");
}

/* ---- v1 */

/* device_state read back: -1 when the read failed or came back short. */
static int mf_read_state(struct mf_view *v, long long *state)
{
	uint64_t raw;
	int have, err = mf_v1_read_field(v->dev, MF_V1_FIELD_DEVICE_STATE, &raw, &have);

	*state = have ? (long long)raw : -1;
	return err;
}

static void mf_v1_reset(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	(void)op;
	r->err = mf_reset(v->dev);
	r->gerr = mf_read_state(v, &r->state);
	v->state = MF_V1_RUNNING;
	mf_new_capture(v);
	printf("       reset -> %s; device_state %s\n", mf_errname(r->err), mf_state_name(r->state));
}

static void mf_v1_set_value(struct mf_view *v, uint32_t value, struct mf_answer *r)
{
	long long cur = v->state, got;
	int saving_was = 0, saving_now = 0, i;

	r->err = mf_v1_write_field(v->dev, MF_V1_FIELD_DEVICE_STATE, value);
	r->gerr = mf_read_state(v, &got);
	if (!r->err) {
		long long new = value & 7;

		for (i = 0; i < MF_V1_SAVING_STATES_N; i++) {
			saving_now |= new == mf_v1_saving_states[i];
			saving_was |= cur == mf_v1_saving_states[i];
		}
		if (saving_now && (!saving_was || ((new & MF_V1_RUNNING) && !(cur & MF_V1_RUNNING))))
			mf_new_capture(v);
	}
	if (got >= 0) {
		if ((got & 7) != v->state)
			v->pending_seen = 0;
		v->state = got & 7;
	}
	if (!r->gerr && got < 0)
		r->gerr = EIO;
	r->state = got < 0 ? -1 : got & 7;
	printf("       device_state := %#x -> %s; reads %s\n", value, mf_errname(r->err), mf_state_name(got));
}

static void mf_v1_set(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	mf_v1_set_value(v, op->b, r);
}

static void mf_v1_get(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	(void)op;
	r->err = r->gerr = mf_read_state(v, &r->state);
	printf("       device_state -> %s %s\n", mf_errname(r->err), mf_state_name(r->state));
}

static void mf_v1_rd(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	int field = (int)op->a, have;
	uint64_t value;

	if (field == MF_V1_FIELD_DEVICE_STATE) {
		mf_v1_get(v, op, r);
		return;
	}
	r->err = mf_v1_read_field(v->dev, field, &value, &have);
	r->value = have && value;
	if (field == MF_V1_FIELD_DATA_OFFSET && !r->err && have &&
	    (value < MF_V1_HEADER_SIZE || value > v->dev->region_size))
		r->window_outside = 1;
	if (field == MF_V1_FIELD_PENDING_BYTES && !r->err && have)
		mf_pending(v, value, r);
	if (have)
		printf("       %s -> %s %llu\n", mf_v1_fields[field].name, mf_errname(r->err), (unsigned long long)value);
	else
		printf("       %s -> %s None\n", mf_v1_fields[field].name, mf_errname(r->err));
}

static void mf_v1_wr(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	int field = (int)op->a, read_only, have_before = 0, have_after;
	uint64_t before = 0, after;

	if (field == MF_V1_FIELD_DEVICE_STATE) {
		mf_v1_set_value(v, op->b, r);
		return;
	}
	/* pending_bytes and data_offset are read-only; data_size while saving (written only while resuming) */
	read_only = field == MF_V1_FIELD_PENDING_BYTES || field == MF_V1_FIELD_DATA_OFFSET ||
		    (field == MF_V1_FIELD_DATA_SIZE && mf_in(v->state, mf_v1_saving_states, MF_V1_SAVING_STATES_N));
	if (read_only)
		mf_v1_read_field(v->dev, field, &before, &have_before);
	r->err = mf_v1_write_field(v->dev, field, op->b);
	printf("       %s := %#x -> %s\n", mf_v1_fields[field].name, op->b, mf_errname(r->err));
	if (field == MF_V1_FIELD_RESERVED) {
		uint64_t value;
		int have;

		if (!mf_v1_read_field(v->dev, MF_V1_FIELD_RESERVED, &value, &have))
			r->value = have && value;
	} else if (read_only) {
		mf_v1_read_field(v->dev, field, &after, &have_after);
		r->value_changed = !r->err && have_before && have_after && after != before;
	}
}

/* One saving iteration; 1 when it ends the drain. */
static int mf_iteration(struct mf_view *v, struct mf_answer *r)
{
	struct mf_iteration it;
	int saving = 0, i, done = 1;

	for (i = 0; i < MF_V1_SAVING_STATES_N; i++)
		saving |= v->state == mf_v1_saving_states[i];
	mf_v1_save_iteration(v->dev, saving, &it);
	r->err = it.err;
	if (it.stage != MF_V1_PENDING && it.have_pending && mf_pending(v, it.pending, r)) {
		free(it.data);
		return 1;
	}
	if (it.stage == MF_V1_DONE) {
		if (it.pending == 0 && v->state == MF_V1_SAVING)
			v->ended = 1;
	} else if (it.stage == MF_V1_MORE || it.stage == MF_V1_DATA) {
		if (it.offset < MF_V1_HEADER_SIZE || it.size > v->dev->region_size ||
		    it.offset > v->dev->region_size - it.size)
			r->window_outside = 1;
		else if (it.stage == MF_V1_MORE && it.len && v->ended)
			r->data_after_end = 1;
		else if (it.stage == MF_V1_MORE) {
			mf_stream_leak(v, it.data, it.len, r);
			mf_buf_insert(&v->cap, v->cap.len, it.data, it.len);
			done = 0;
		}
	}
	free(it.data);
	return done;
}

static void mf_v1_save(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	(void)op;
	mf_iteration(v, r);
	printf("       save iteration -> %s: captured %zu bytes\n", mf_errname(r->err), v->cap.len);
}

static void mf_v1_drain(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	int i;

	(void)op;
	for (i = 0; i < MF_DRAIN_LIMIT; i++)
		if (mf_iteration(v, r))
			break;
	if (i == MF_DRAIN_LIMIT)
		r->hang = 1;
	printf("       drain -> %s: captured %zu bytes%s\n", mf_errname(r->err), v->cap.len,
	       r->hang ? " (pending_bytes never reached 0)" : "");
}

static void mf_v1_rdwin(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	uint64_t offset;
	size_t got;
	int have;

	r->err = mf_v1_read_field(v->dev, MF_V1_FIELD_DATA_OFFSET, &offset, &have);
	if (r->err || !have) {
		r->err = r->err ? r->err : EIO;
		printf("       data_offset -> %s\n", mf_errname(r->err));
		return;
	}
	r->err = mf_region_read(v->dev, offset, op->b, mf_iobuf, &got);
	r->len = (long long)got;
	printf("       window read %u bytes -> %s\n", op->b, mf_errname(r->err));
}

static void mf_v1_wrwin(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	uint64_t offset;
	int have;

	r->err = mf_v1_read_field(v->dev, MF_V1_FIELD_DATA_OFFSET, &offset, &have);
	if (r->err || !have) {
		r->err = r->err ? r->err : EIO;
		printf("       data_offset -> %s\n", mf_errname(r->err));
		return;
	}
	r->err = mf_region_write(v->dev, offset, op->data, op->len);
	if (!r->err)
		r->err = mf_v1_write_field(v->dev, MF_V1_FIELD_DATA_SIZE, op->len);
	if (!r->err)
		mf_add(v->entered, op->data, op->len);
	printf("       window write %u bytes + data_size -> %s\n", op->len, mf_errname(r->err));
}

static void mf_v1_transfer(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	struct mf_view *dst = &mf_views[op->a];
	struct mf_seg s;
	size_t pos = 0;

	if (dst->state != MF_V1_RESUMING || !v->cap.len) {
		mf_no_slot(r);
		return;
	}
	mf_seg_init(&s, op->b);
	while (pos < v->cap.len) {
		size_t piece = mf_seg_next(&s, v->cap.len - pos), off = 0;

		while (off < piece) {
			uint64_t offset;
			size_t taken;

			r->err = mf_v1_write_chunk(dst->dev, v->cap.p + pos + off, piece - off, &offset, &taken);
			if (r->err == EINTR)
				continue;
			if (r->err) {
				printf("       transfer chunk -> %s\n", mf_errname(r->err));
				return;
			}
			if (!taken) {
				r->window_outside = 1;
				printf("       data_offset %#llx outside the region\n", (unsigned long long)offset);
				return;
			}
			mf_add(dst->entered, v->cap.p + pos + off, taken);
			off += taken;
		}
		pos += piece;
	}
	printf("       transferred %zu bytes\n", v->cap.len);
}

/* ---- race: two calls at once (harness.runtime.run_race) */

struct mf_race_side {
	struct mf_dev *dev;
	int kind;			/* enum mf_race_call */
	uint32_t arg;			/* the state a SET asks for */
	int fd;				/* the data_fd of read, write, close and precopy */
	const unsigned char *data;	/* what a write writes */
	uint32_t len;
	pthread_barrier_t *start;
	int err;
	long long value;		/* the data_fd a SET returned, the state a GET read, bytes moved */
	unsigned char buf[MF_RACE_READ];
};

/* One side's device call (harness.runtime.race_call). */
static void mf_race_call(struct mf_race_side *s)
{
	struct mf_dev *d = s->dev;
	uint64_t raw, initial, dirty;
	size_t got;
	int fd, have;

	s->value = -1;
	switch (s->kind) {
	case MF_RACE_CALL_RESET:
		s->err = mf_reset(d);
		break;
	case MF_RACE_CALL_REOPEN:
		s->err = mf_reopen(d);
		break;
	case MF_RACE_CALL_SET:
		if (MF_PROTO_V2) {
			s->err = mf_set_state(d, s->arg, &fd);
			s->value = fd;
		} else {
			s->err = mf_v1_write_field(d, MF_V1_FIELD_DEVICE_STATE, s->arg);
		}
		break;
	case MF_RACE_CALL_GET:
		if (MF_PROTO_V2) {
			s->err = mf_get_state(d, &s->value);
		} else {
			s->err = mf_v1_read_field(d, MF_V1_FIELD_DEVICE_STATE, &raw, &have);
			s->value = have ? (long long)raw : -1;
		}
		break;
	case MF_RACE_CALL_READ:
		s->err = mf_read(d, s->fd, s->buf, MF_RACE_READ, &got);
		s->value = (long long)got;
		break;
	case MF_RACE_CALL_WRITE:
		s->err = mf_write(d, s->fd, s->data, s->len, &s->value);
		break;
	case MF_RACE_CALL_CLOSE:
		s->err = mf_close(d, s->fd);
		break;
	default:
		s->err = mf_precopy_info(d, s->fd, &initial, &dirty);
		break;
	}
}

/* The second thread of a race: released with the first by the barrier. */
static void *mf_race_thread(void *arg)
{
	struct mf_race_side *s = arg;

	mf_sys_thread_start();
	pthread_barrier_wait(s->start);
	mf_race_call(s);
	mf_sys_race_done();
	return NULL;
}

/* A side's result in the outcome (harness.runtime.race_result). */
static long long mf_race_result(const struct mf_race_side *s, long long mask)
{
	long long state;

	if (s->err)
		return MF_RACE_FAILED;
	if (s->kind == MF_RACE_CALL_GET) {
		state = s->value >= 0 ? s->value & mask : 0x7f;
		return MF_RACE_GOT | (state < 0x7f ? state : 0x7f);
	}
	return s->kind == MF_RACE_CALL_SET && s->value >= 0 ? MF_RACE_FD : MF_RACE_OK;
}

static void mf_race_text(const struct mf_race_side *s, long long mask, char *out, size_t room)
{
	switch (s->kind) {
	case MF_RACE_CALL_SET:
		snprintf(out, room, "SET %s -> %s, data_fd %lld", mf_state_name(s->arg), mf_errname(s->err), s->value);
		break;
	case MF_RACE_CALL_GET:
		snprintf(out, room, "GET -> %s %s", mf_errname(s->err),
			 mf_state_name(s->err || s->value < 0 ? -1 : s->value & mask));
		break;
	case MF_RACE_CALL_READ:
		snprintf(out, room, "read fd %d -> %s, %lld bytes", s->fd, mf_errname(s->err), s->value);
		break;
	case MF_RACE_CALL_WRITE:
		snprintf(out, room, "write fd %d -> %s, %lld", s->fd, mf_errname(s->err), s->value);
		break;
	case MF_RACE_CALL_CLOSE:
		snprintf(out, room, "close fd %d -> %s", s->fd, mf_errname(s->err));
		break;
	case MF_RACE_CALL_PRECOPY:
		snprintf(out, room, "PRECOPY_INFO fd %d -> %s", s->fd, mf_errname(s->err));
		break;
	default:
		snprintf(out, room, "%s -> %s", s->kind == MF_RACE_CALL_RESET ? "reset" : "reopen", mf_errname(s->err));
	}
}

/* Calls x and y at once: y on a second thread, both released by a barrier (on the simulated kernel of
 * MF_SHIM, interleaved as the op's schedule says); then the state read back and the outcome. The
 * books are kept as the answers say, whatever the order was (harness.runtime.Replay.op_race). */
static void mf_op_race(struct mf_view *v, const struct mf_op *op, struct mf_answer *r)
{
	struct mf_race_side sides[2];
	pthread_barrier_t start;
	pthread_t other;
	long long mask = MF_PROTO_V2 ? -1 : 7, got, state;
	char text[2][200];
	int i, j, k, fd, reopened, last;

	memset(sides, 0, sizeof(sides));
	sides[0].kind = (int)(op->a >> MF_RACE_X_SHIFT & MF_RACE_X_MASK);
	sides[0].arg = op->a >> MF_RACE_XARG_SHIFT & MF_RACE_XARG_MASK;
	sides[1].kind = (int)(op->a >> MF_RACE_Y_SHIFT & MF_RACE_Y_MASK);
	sides[1].arg = op->a >> MF_RACE_YARG_SHIFT & MF_RACE_YARG_MASK;
	for (i = 0; i < 2; i++) {
		struct mf_race_side *s = &sides[i];

		s->dev = v->dev;
		s->data = op->data;
		s->len = op->len;
		s->start = &start;
		s->fd = -1;
		if (s->kind == MF_RACE_CALL_READ || s->kind == MF_RACE_CALL_WRITE || s->kind == MF_RACE_CALL_CLOSE ||
		    s->kind == MF_RACE_CALL_PRECOPY) {
			s->fd = MF_PROTO_V2 ? mf_slot(v, s->arg) : -1;
			if (s->fd < 0) {
				mf_no_slot(r);
				return;
			}
		}
	}
	pthread_barrier_init(&start, NULL, 2);
	mf_sys_race_begin(v->dev->fd, op->a >> MF_RACE_SCHED_SHIFT & MF_RACE_SCHED_MASK,
			  (uint32_t)sides[0].kind | (uint32_t)sides[1].kind << 8);
	if (pthread_create(&other, NULL, mf_race_thread, &sides[1])) {
		fprintf(stderr, "cannot start a thread for the race\n");
		exit(MF_EXIT_INCONCLUSIVE);
	}
	pthread_barrier_wait(&start);
	mf_race_call(&sides[0]);
	mf_sys_race_done();
	pthread_join(other, NULL);
	pthread_barrier_destroy(&start);
	r->gerr = MF_PROTO_V2 ? mf_get_state(v->dev, &got) : mf_read_state(v, &got);
	state = r->gerr || got < 0 ? -1 : got & mask;
	reopened = sides[0].kind == MF_RACE_CALL_REOPEN || sides[1].kind == MF_RACE_CALL_REOPEN;
	if (reopened)
		v->nfds = 0;
	last = sides[0].kind == MF_RACE_CALL_SET && state == (long long)sides[0].arg ? 0 : 1;	/* it came last */
	for (k = 0; k < 2; k++) {
		const struct mf_race_side *s = &sides[k ? last : 1 - last];

		if (s->kind == MF_RACE_CALL_CLOSE) {
			for (j = 0; j < v->nfds && v->fds[j] != s->fd; j++)
				;
			if (j < v->nfds) {
				for (; j + 1 < v->nfds; j++) {
					v->fds[j] = v->fds[j + 1];
					v->saving[j] = v->saving[j + 1];
				}
				v->nfds--;
			}
		} else if (s->kind == MF_RACE_CALL_SET && MF_PROTO_V2 && !s->err && s->value >= 0 && v->nfds < MF_MAX_FDS &&
			   !(reopened && state != (long long)s->arg)) {	/* after a racing reopen only if the SET came last */
			fd = (int)s->value;
			v->fds[v->nfds] = fd;
			v->saving[v->nfds++] = s->arg != MF_V2_RESUMING;
			if (s->arg != MF_V2_RESUMING)
				mf_new_capture(v);
		} else if (s->kind == MF_RACE_CALL_READ && !s->err && s->value > 0) {
			mf_buf_insert(&v->cap, v->cap.len, s->buf, (size_t)s->value);
		} else if (s->kind == MF_RACE_CALL_WRITE && !s->err && s->value > 0) {
			mf_add(v->entered, s->data, (size_t)s->value < s->len ? (size_t)s->value : s->len);
		}
	}
	for (i = 0; i < 2; i++)
		mf_race_text(&sides[i], mask, text[i], sizeof(text[i]));
	v->pc_expect = -1;
	if (state >= 0)
		v->state = state;
	r->state = state;
	r->have_race = 1;
	r->race_outcome = (state < 0 || state >= 0xff ? 0xff : state) | mf_race_result(&sides[0], mask) << 8 |
			  mf_race_result(&sides[1], mask) << 16;
	printf("       race: %s | %s; GET %s\n", text[0], text[1], mf_state_name(state));
}

/* Run one op; 0 when the runtime has no handler for it (the exporter refuses such programs). */
static int mf_run_op(const struct mf_op *op, struct mf_answer *r)
{
	struct mf_view *v = &mf_views[op->dev];

	switch (op->code) {
	case MF_OP_RESET:
		(MF_PROTO_V2 ? mf_v2_reset : mf_v1_reset)(v, op, r);
		return 1;
	case MF_OP_ACTIVITY:
		mf_op_activity(v, op, r);
		return 1;
	case MF_OP_MANGLE:
		mf_op_mangle(v, op, r);
		return 1;
	case MF_OP_REOPEN:
		mf_op_reopen(v, op, r);
		return 1;
	case MF_OP_RDREG:
		mf_op_rdreg(v, op, r);
		return 1;
	case MF_OP_WRREG:
		mf_op_wrreg(v, op, r);
		return 1;
	case MF_OP_RACE:
		mf_op_race(v, op, r);
		return 1;
	case MF_OP_TRANSFER:
		(MF_PROTO_V2 ? mf_v2_transfer : mf_v1_transfer)(v, op, r);
		return 1;
	case MF_OP_SET:
		(MF_PROTO_V2 ? mf_v2_set : mf_v1_set)(v, op, r);
		return 1;
	case MF_OP_GET:
		(MF_PROTO_V2 ? mf_v2_get : mf_v1_get)(v, op, r);
		return 1;
	case MF_OP_DRAIN:
		(MF_PROTO_V2 ? mf_v2_drain : mf_v1_drain)(v, op, r);
		return 1;
	case MF_OP_READ:
		mf_v2_read(v, op, r);
		return 1;
	case MF_OP_WRITE:
		mf_v2_write(v, op, r);
		return 1;
	case MF_OP_CLOSE:
		mf_v2_close(v, op, r);
		return 1;
	case MF_OP_SEEK:
		mf_v2_seek(v, op, r);
		return 1;
	case MF_OP_PRECOPY:
		mf_v2_precopy(v, op, r);
		return 1;
	case MF_OP_DATASIZE:
		mf_v2_datasize(v, op, r);
		return 1;
	case MF_OP_FEATURE:
		mf_v2_feature(v, op, r);
		return 1;
	case MF_OP_RD:
		mf_v1_rd(v, op, r);
		return 1;
	case MF_OP_WR:
		mf_v1_wr(v, op, r);
		return 1;
	case MF_OP_SAVE:
		mf_v1_save(v, op, r);
		return 1;
	case MF_OP_RDWIN:
		mf_v1_rdwin(v, op, r);
		return 1;
	case MF_OP_WRWIN:
		mf_v1_wrwin(v, op, r);
		return 1;
	default:
		return 0;
	}
}

/* ------------------------------------------------------------------------- the claim */

/* Whether 64-bit value lies in a kernel address range (harness.runtime.kernel_shaped). */
static int mf_kernel_shaped(uint64_t value)
{
	int i;

	for (i = 0; i < MF_KERNEL_RANGES_N; i++)
		if (mf_kernel_ranges[i][0] <= value && value <= mf_kernel_ranges[i][1])
			return 1;
	return 0;
}

/*
 * The 8-byte windows of data (little endian, any alignment) with the shape of a kernel address
 * (harness.runtime.kernel_addresses): how many, the first `room` of their offsets in at[]. Only
 * windows ending in 0xff are decoded (every range's top byte); none if 0xff entered the device.
 */
static int mf_kernel_addresses(const unsigned char *data, size_t len, const mf_byteset entered, size_t *at,
			       int room)
{
	size_t end, i;
	int n = 0;

	if (mf_has(entered, 0xff))
		return 0;
	for (end = 7; end < len; end++) {
		uint64_t value = 0;

		if (data[end] != 0xff || (end + 1 < len && data[end + 1] == 0xff))
			continue;	/* inside a run of 0xff: a sign-extended negative number, no pointer */
		for (i = 0; i < 8; i++)
			value |= (uint64_t)data[end - 7 + i] << (8 * i);
		if (mf_kernel_shaped(value)) {
			if (n < room)
				at[n] = end - 7;
			n++;
		}
	}
	return n;
}

/* Byte `index` of what a read handed out neither entered the device nor is one of its idle values. */
static int mf_not_entered(const unsigned char *data, size_t len, const mf_byteset entered, long long index,
			  const long long *idle, int nidle)
{
	return index >= 0 && (size_t)index < len && !mf_has(entered, data[index]) && !mf_in(data[index], idle, nidle);
}

/* Whether the answer at the claim's step shows the claimed defect (harness.runtime.shows). */
static int mf_shows(const struct mf_answer *r)
{
	if (r->skipped)
		return 0;
	switch (MF_CLAIM_CHECK) {
	case MF_CHECK_OK:
		return r->err == 0;
	case MF_CHECK_FAILED:
		return r->err != 0;
	case MF_CHECK_ERRNO:
		return r->err == MF_CLAIM_ARG;
	case MF_CHECK_STATE_NOT:
		return r->state != MF_CLAIM_ARG;
	case MF_CHECK_STATE_NOT_IN:
		return r->err && !mf_in(r->state, mf_claim_set, MF_CLAIM_NSET);
	case MF_CHECK_FD:
		return r->fd >= 0;
	case MF_CHECK_NO_FD:
		return r->err == 0 && r->fd < 0;
	case MF_CHECK_GET_FAILED:
		return r->gerr != 0;
	case MF_CHECK_LONGER_THAN:
		return r->len > MF_CLAIM_ARG;
	case MF_CHECK_VALUE_NONZERO:
		return r->value != 0;
	case MF_CHECK_STALLED:
		return r->stalled;
	case MF_CHECK_HANG:
		return r->hang;
	case MF_CHECK_PRECOPY_OVERRUN:
		return r->precopy_overrun;
	case MF_CHECK_INITIAL_GREW:
		return r->initial_grew;
	case MF_CHECK_DATA_AFTER_END:
		return r->data_after_end;
	case MF_CHECK_WINDOW_OUTSIDE:
		return r->window_outside;
	case MF_CHECK_EXCEPTION:
		return r->exception;
	case MF_CHECK_NOT_ENTERED:
		return !r->err && mf_not_entered(r->data, r->dlen, r->entered, MF_CLAIM_ARG, mf_claim_set, MF_CLAIM_NSET);
	case MF_CHECK_KERNEL_ADDRESS:	/* in a stream read, or in a register read */
		return r->kernel_address || (!r->err && mf_kernel_addresses(r->data, r->dlen, r->entered, NULL, 0) > 0);
	case MF_CHECK_VALUE_CHANGED:
		return r->value_changed;
	case MF_CHECK_PENDING_GREW:
		return r->pending_grew;
	case MF_CHECK_RACE_OUTCOME_NOT_IN:
		return r->have_race && !mf_in(r->race_outcome, mf_claim_set, MF_CLAIM_NSET);
	case MF_CHECK_STATE_UNKNOWN:	/* -1: no state was read at this step */
		return !r->gerr && r->state != -1 && (r->state < 0 || r->state >= MF_CLAIM_ARG);
	default:
		return 0;
	}
}

/* ------------------------------------------------------------------------- the watchdog */

static double mf_timeout = 10.0;
static volatile sig_atomic_t mf_current_step = -1;
static char mf_hang_text[256];
static size_t mf_hang_len;
static int mf_hang_mine;

static void mf_on_alarm(int sig)
{
	(void)sig;
	if (write(1, mf_hang_text, mf_hang_len) < 0)
		_exit(MF_EXIT_INCONCLUSIVE);
	_exit(mf_hang_mine ? MF_EXIT_FINDING : MF_EXIT_INCONCLUSIVE);
}

static void mf_begin(int step, const char *text)
{
	struct itimerval t;
	int mine = step == MF_CLAIM_STEP && MF_CLAIM_CHECK == MF_CHECK_HANG;

	printf("[%2d] %s\n", step, text);
	fflush(stdout);
	snprintf(mf_hang_text, sizeof(mf_hang_text), "       no return after %g s: the call hangs\n%s%s at step %d\n",
		 mf_timeout, mine ? "REPRODUCED: " : "a different problem: a hang", mine ? MF_CLAIM_KIND : "", step);
	mf_hang_len = strlen(mf_hang_text);
	mf_hang_mine = mine;
	mf_current_step = step;
	memset(&t, 0, sizeof(t));
	t.it_value.tv_sec = (time_t)mf_timeout;
	t.it_value.tv_usec = (suseconds_t)((mf_timeout - (double)(time_t)mf_timeout) * 1e6);
	if (!t.it_value.tv_sec && !t.it_value.tv_usec)
		t.it_value.tv_usec = 1;
	setitimer(ITIMER_REAL, &t, NULL);
}

static void mf_end(void)
{
	struct itimerval t;

	memset(&t, 0, sizeof(t));
	setitimer(ITIMER_REAL, &t, NULL);
	mf_current_step = -1;
	fflush(stdout);
}

/* Replay the program up to the claim's step; the exit code (harness.runtime.replay). */
static int mf_replay(void)
{
	struct mf_answer r;
	int step;

	mf_answer_init(&r);
	for (step = 0; step < MF_NOPS; step++) {
		const struct mf_op *op = &mf_program[step];

		mf_answer_init(&r);
		mf_begin(step, op->text);
		if (!mf_run_op(op, &r)) {
			mf_end();
			printf("       this runtime cannot run the op\na different problem: the reproducer is "
			       "incomplete at step %d\n", step);
			return MF_EXIT_INCONCLUSIVE;
		}
		mf_end();
		if (r.skipped)
			printf("       skipped (nothing to act on)\n");
		if (mf_raised) {
			r.exception = 1;
			printf("       exception: the simulated device raised\n");
			if (step == MF_CLAIM_STEP && MF_CLAIM_CHECK == MF_CHECK_EXCEPTION) {
				printf("REPRODUCED: %s at step %d\n", MF_CLAIM_KIND, step);
				return MF_EXIT_FINDING;
			}
			printf("a different problem: an exception at step %d\n", step);
			return MF_EXIT_INCONCLUSIVE;
		}
		if (step == MF_CLAIM_STEP)
			break;
	}
	if (MF_CLAIM_CHECK == MF_CHECK_NONE) {
		printf("the recorded finding (%s: expected %s; observed %s) cannot be judged from user space; "
		       "compare the output above with it\n", MF_CLAIM_KIND, MF_CLAIM_EXPECTED, MF_CLAIM_OBSERVED);
		return MF_EXIT_INCONCLUSIVE;
	}
	if (mf_shows(&r)) {
		printf("REPRODUCED: %s at step %d (%s): %s; expected %s, recorded %s\n", MF_CLAIM_KIND, MF_CLAIM_STEP,
		       MF_CLAIM_OP, mf_check_text[MF_CLAIM_CHECK], MF_CLAIM_EXPECTED, MF_CLAIM_OBSERVED);
		return MF_EXIT_FINDING;
	}
	printf("not reproduced: step %d behaved as the protocol requires (expected %s)\n", MF_CLAIM_STEP,
	       MF_CLAIM_EXPECTED);
	return MF_EXIT_OK;
}

/* ------------------------------------------------------------------------- main */

static void mf_usage(FILE *to, const char *argv0)
{
	fprintf(to, "usage: %s [-t SECONDS] GROUP DEVICE [GROUP DEVICE ...]\n"
		"       %s [-t SECONDS] --cdev vfioN [--cdev vfioM ...]\n"
		"GROUP is the IOMMU group number (/dev/vfio/GROUP), DEVICE the mdev UUID or PCI address\n"
		"(legacy group/container API); --cdev opens /dev/vfio/devices/vfioN through iommufd.\n"
		"The program uses %d device(s). -t: seconds before a call counts as hung (default 10).\n"
		"Exit: %d reproduced, %d not reproduced, %d usage, %d a device cannot be opened, %d inconclusive.\n",
		argv0, argv0, MF_NDEVICES, MF_EXIT_FINDING, MF_EXIT_OK, MF_EXIT_USAGE, MF_EXIT_UNAVAILABLE,
		MF_EXIT_INCONCLUSIVE);
}

int main(int argc, char **argv)
{
	struct mf_dev devs[2];
	const char *pos[2 * 2], *cdevs[2];
	int npos = 0, ncdev = 0, ndev = 0, i, status;
	char *end;

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			mf_usage(stdout, argv[0]);
			return MF_EXIT_OK;
		} else if ((!strcmp(argv[i], "-t") || !strcmp(argv[i], "--timeout")) && i + 1 < argc) {
			mf_timeout = strtod(argv[++i], &end);
			if (*end || mf_timeout <= 0) {
				fprintf(stderr, "-t: a number of seconds, not %s\n", argv[i]);
				return MF_EXIT_USAGE;
			}
		} else if (!strcmp(argv[i], "--cdev") && i + 1 < argc) {
			if (ncdev == 2) {
				fprintf(stderr, "at most 2 devices\n");
				return MF_EXIT_USAGE;
			}
			cdevs[ncdev++] = argv[++i];
		} else if (argv[i][0] != '-' && npos < 4) {
			pos[npos++] = argv[i];
		} else {
			mf_usage(stderr, argv[0]);
			return MF_EXIT_USAGE;
		}
	}
	if (npos % 2) {
		fprintf(stderr, "give a GROUP and a DEVICE for every device\n");
		return MF_EXIT_USAGE;
	}
	if (npos / 2 + ncdev < MF_NDEVICES || npos / 2 + ncdev > 2) {
		fprintf(stderr, "the program uses %d device(s); %d given\n", MF_NDEVICES, npos / 2 + ncdev);
		return MF_EXIT_USAGE;
	}
	for (i = 0; i < npos; i += 2) {
		strtol(pos[i], &end, 10);
		if (*end || !*pos[i]) {
			fprintf(stderr, "%s is not an IOMMU group number\n", pos[i]);
			return MF_EXIT_USAGE;
		}
	}
	memset(devs, 0, sizeof(devs));
	for (i = 0; i < 2; i++)
		devs[i].fd = devs[i].group_fd = devs[i].iommufd = -1;
	status = MF_EXIT_OK;
	for (i = 0; i < npos && !status; i += 2)
		if (mf_open_group(&devs[ndev++], atoi(pos[i]), pos[i + 1]))
			status = MF_EXIT_UNAVAILABLE;
	for (i = 0; i < ncdev && !status; i++)
		if (mf_open_cdev(&devs[ndev++], cdevs[i]))
			status = MF_EXIT_UNAVAILABLE;
	for (i = 0; i < ndev && !status; i++) {
		if (devs[i].protocol != (MF_PROTO_V2 ? 2 : 1)) {
			fprintf(stderr, "%s does not speak migration protocol %s\n", devs[i].name, MF_PROTO);
			status = MF_EXIT_UNAVAILABLE;
		}
	}
	if (!status) {
		signal(SIGALRM, mf_on_alarm);
		for (i = 0; i < ndev; i++) {
			memset(&mf_views[i], 0, sizeof(mf_views[i]));
			mf_views[i].dev = &devs[i];
			mf_views[i].state = MF_PROTO_V2 ? MF_V2_RUNNING : MF_V1_RUNNING;
			mf_new_capture(&mf_views[i]);
		}
		status = mf_replay();
	}
	for (i = 0; i < ndev; i++) {
		mf_close_device(&devs[i]);
		free(mf_views[i].cap.p);
	}
	return status;
}
