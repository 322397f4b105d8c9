// The sandbox against a program that goes after the sandbox itself: its init, the supervisor's
// clock and pipes, the status channel, shared memory, other runs, and the host's tree. Each test is
// one class of attack; the suite also runs unprivileged (user-namespace mode), see CMakeLists.txt.
#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "sandbox/cgroup.h"
#include "sandbox/sandbox.h"

using namespace grpo::sandbox;

namespace {

Result py(const std::string& code, Limits L = {}, const std::string& stdin_data = "") {
  return run({"python3", "-I", "main.py"}, stdin_data, {{"main.py", code}}, L);
}

std::string nonce() {
  std::random_device rd;
  return "grpo_secret_" + std::to_string(rd()) + std::to_string(getpid());
}

int count_tmp_entries(const std::string& prefix) {
  int n = 0;
  DIR* d = opendir("/tmp");
  while (dirent* e = readdir(d))
    if (std::string(e->d_name).rfind(prefix, 0) == 0) ++n;
  closedir(d);
  return n;
}

class Hardening : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!probe().complete()) GTEST_SKIP() << probe().summary();
  }
};

}  // namespace

TEST_F(Hardening, InitIsOutOfReach) {
  const std::string secret = nonce();
  setenv("GRPO_SANDBOX_TEST_SECRET", secret.c_str(), 1);
  auto r = py("import os, ctypes\n"
              "got = []\n"
              "for p in ['/proc/1/environ', '/proc/1/mem', '/proc/1/maps', '/proc/1/auxv']:\n"
              "    try:\n        got.append((p, open(p, 'rb').read(4096)))\n    except OSError as e:\n        print('no', p, e.errno)\n"
              "try:\n    fds = os.listdir('/proc/1/fd'); got.append(('fd', fds))\nexcept OSError as e:\n    print('no fd list', e.errno)\n"
              "for fd in range(0, 16):\n"
              "    try:\n        f = os.open('/proc/1/fd/%d' % fd, os.O_WRONLY); os.write(f, b'forged'); got.append(('fd', fd))\n"
              "    except OSError:\n        pass\n"
              "libc = ctypes.CDLL(None, use_errno=True)\n"
              "if libc.ptrace(16, 1, 0, 0) == 0: got.append(('ptrace', 1))\n"
              "print('GOT', got)\n");
  unsetenv("GRPO_SANDBOX_TEST_SECRET");
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  EXPECT_NE(r.out.find("GOT []"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(secret), std::string::npos);
}

TEST_F(Hardening, NoTerminalToPushInputInto) {
  auto r = py("import fcntl, termios, os\n"
              "for fd in (0, 1, 2):\n"
              "    try:\n        fcntl.ioctl(fd, termios.TIOCSTI, b'x'); print('PUSHED', fd)\n"
              "    except OSError as e:\n        print('refused', fd, e.errno)\n"
              "for p in ['/dev/tty', '/dev/console', '/dev/pts/0', '/dev/ptmx']:\n"
              "    try:\n        open(p, 'wb'); print('OPENED', p)\n    except OSError:\n        pass\n");
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  EXPECT_EQ(r.out.find("PUSHED"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("OPENED"), std::string::npos) << r.out;
}

TEST_F(Hardening, DeadlineHoldsWhateverTheProgramDoesWithItsStdio) {
  Limits L;
  L.timeout_s = 1;
  const char* programs[] = {
      "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(100)\n",
      "import os, time\nn = os.open('/dev/null', os.O_WRONLY)\nos.dup2(n, 1)\nos.dup2(n, 2)\ntime.sleep(100)\n",
      "import os, signal\nos.close(1)\nos.close(2)\nos.kill(os.getpid(), signal.SIGSTOP)\n",
      "import os, time\npid = os.fork()\nos.close(1)\nos.close(2)\nif pid == 0:\n    time.sleep(100)\nos.waitpid(pid, 0)\n",
  };
  for (const char* program : programs) {
    auto r = py(program, L);
    EXPECT_EQ(r.status, Status::Timeout) << program << to_json(r);
    EXPECT_LT(r.wall_ms, 3000) << program;
  }
  // A program that ends while a child it left holds stdout open: the run ends with the program.
  auto r = py("import os, time\nif os.fork() == 0:\n    time.sleep(100)\nprint('parent done')\n", L);
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  EXPECT_LT(r.wall_ms, 3000);
}

TEST_F(Hardening, UnreadStdinNeverReachesTheCallerAsSigpipe) {
  // This test process keeps SIGPIPE's default action: a broken pipe would kill it.
  std::string big(16 << 20, 'x');
  for (int i = 0; i < 3; ++i) {
    auto r = py("print('not reading')\n", {}, big);
    EXPECT_EQ(r.status, Status::Ok) << to_json(r);
    EXPECT_EQ(r.out, "not reading\n");
  }
}

TEST_F(Hardening, NoExitStatusPosesAsASandboxFailure) {
  for (int code : {120, 121, 122, 123, 124, 125, 126, 127}) {
    auto r = py("import os\nos._exit(" + std::to_string(code) + ")\n");
    EXPECT_EQ(r.status, Status::RuntimeError) << code << " " << to_json(r);
    EXPECT_EQ(r.exit_code, code);
    EXPECT_TRUE(r.error.empty()) << r.error;
  }
}

TEST_F(Hardening, SharedMemoryIsBounded) {
  auto r = py("import os, ctypes\n"
              "libc = ctypes.CDLL(None, use_errno=True)\n"
              "print('memfd', libc.memfd_create(b'x', 0))\n"
              "print('shmget', libc.shmget(0, 1 << 30, 0o1600))\n"
              "print('msgget', libc.msgget(0, 0o1600))\n"
              "for p in ['/dev/shm/x', '/run/shm/x']:\n"
              "    try:\n        open(p, 'wb'); print('OPENED', p)\n    except OSError:\n        pass\n"
              "n = 0\n"
              "try:\n    with open('/tmp/fill', 'wb') as f:\n        while True:\n            f.write(b'x' * (1 << 20)); f.flush(); n += 1\n"
              "except OSError:\n    pass\nprint('tmp MB', n)\n");
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  EXPECT_NE(r.out.find("memfd -1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("shmget -1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("msgget -1"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("OPENED"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tmp MB 1"), std::string::npos) << r.out;  // 16 MB of /tmp, no more
}

TEST_F(Hardening, ForkedChildrenShareOneMemoryLimit) {
  if (cgroup_support().version == CgroupSupport::Version::None)
    GTEST_SKIP() << "per-run memory needs a cgroup: " << cgroup_support().summary();
  Limits L;
  L.memory_mb = 256;
  L.timeout_s = 20;
  // Four processes of 150 MB each: every one is under the per-process limit, together 2.3x the run's.
  auto r = py("import os, time\n"
              "kids = []\n"
              "for i in range(3):\n"
              "    pid = os.fork()\n"
              "    if pid == 0:\n        x = b'\x01' * (150 << 20)\n        time.sleep(5)\n        os._exit(0)\n"
              "    kids.append(pid)\n"
              "x = b'\x01' * (150 << 20)\n"
              "ok = all(os.waitpid(k, 0)[1] == 0 for k in kids)\nprint('ALL HELD' if ok else 'lost a child')\n"
              "raise SystemExit(0 if ok else 1)\n",
              L);
  EXPECT_EQ(r.status, Status::MemoryLimit) << to_json(r);
  EXPECT_EQ(r.out.find("ALL HELD"), std::string::npos);
}

TEST_F(Hardening, ConcurrentRunsHaveTheirOwnUid) {
  if (!probe().root) GTEST_SKIP() << "user-namespace mode: every run is alone in its own user namespace";
  std::vector<std::string> outs(4);
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i)
    ts.emplace_back([&, i] { outs[i] = py("import os, time\nprint(os.getuid())\ntime.sleep(0.5)\n").out; });
  for (auto& t : ts) t.join();
  std::set<std::string> uids(outs.begin(), outs.end());
  EXPECT_EQ(uids.size(), 4u) << outs[0] << outs[1] << outs[2] << outs[3];
}

TEST_F(Hardening, NothingIsLeftOnTheHost) {
  const int before = count_tmp_entries("grpo-sandbox-");
  Limits L;
  L.timeout_s = 3;
  // A 6000-level tree, files everywhere, then a crash; and the same cut short by the deadline.
  for (const char* tail : {"raise SystemExit(3)\n", "import time\ntime.sleep(100)\n"}) {
    auto r = py(std::string("import os\nfor i in range(6000):\n    os.mkdir('d')\n    os.chdir('d')\n"
                            "    open('f', 'w').write('x')\n") + tail,
                L);
    EXPECT_TRUE(r.status == Status::RuntimeError || r.status == Status::Timeout) << to_json(r);
  }
  EXPECT_EQ(count_tmp_entries("grpo-sandbox-"), before);
  std::ifstream mounts("/proc/self/mountinfo");
  std::string all((std::istreambuf_iterator<char>(mounts)), {});
  EXPECT_EQ(all.find("grpo-sandbox"), std::string::npos);
}

TEST_F(Hardening, OnlyAllowedSystemCalls) {
  auto r = py("import ctypes, resource, os, socket, multiprocessing\n"
              "libc = ctypes.CDLL(None, use_errno=True)\n"
              "print('keyctl', libc.syscall(250, 0, 0, 0, 0, 0), ctypes.get_errno())\n"
              "print('mount', libc.mount(b'none', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno())\n"
              "print('unshare', libc.unshare(0x10000000), ctypes.get_errno())\n"
              "print('limit', resource.getrlimit(resource.RLIMIT_AS)[0] > 0)\n"
              "a, b = socket.socketpair()\na.send(b'ok')\nprint('pair', b.recv(2))\n"
              "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
              "try:\n    s.bind('\\0grpo-shared-name'); print('BOUND')\nexcept OSError as e:\n    print('bind refused')\n"
              "try:\n    s.listen(); print('LISTENING')\nexcept OSError as e:\n    print('listen refused')\n");
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  EXPECT_NE(r.out.find("keyctl -1 38"), std::string::npos) << r.out;  // ENOSYS
  EXPECT_NE(r.out.find("mount -1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("unshare -1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("limit True"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("pair b'ok'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("bind refused"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("listen refused"), std::string::npos) << r.out;
}
