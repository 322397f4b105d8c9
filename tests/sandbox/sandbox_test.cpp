// The sandbox against attacks, each in its own test: the attack fails or is stopped, the host is
// unchanged afterwards, and the next run works.
#include "sandbox/sandbox.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <fstream>
#include <random>

#include "util/error.h"

using namespace grpo::sandbox;

namespace {

Result py(const std::string& code, Limits L = {}, const std::string& stdin_data = "") {
  return run({"python3", "-I", "main.py"}, stdin_data, {{"main.py", code}}, L);
}

bool host_has(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// Processes on the host whose command line contains `marker`.
int host_processes_with(const std::string& marker) {
  int n = 0;
  DIR* d = opendir("/proc");
  while (dirent* e = readdir(d)) {
    if (!isdigit(e->d_name[0])) continue;
    std::ifstream f(std::string("/proc/") + e->d_name + "/cmdline");
    std::string s((std::istreambuf_iterator<char>(f)), {});
    if (s.find(marker) != std::string::npos) ++n;
  }
  closedir(d);
  return n;
}

void next_run_works() {
  auto r = py("print(sum(range(10)))");
  ASSERT_EQ(r.status, Status::Ok) << to_json(r);
  EXPECT_EQ(r.out, "45\n");
}

std::string nonce() {
  std::random_device rd;
  return "grpo_sbx_" + std::to_string(rd()) + std::to_string(getpid());
}

class Sandbox : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!probe().complete()) GTEST_SKIP() << probe().summary();
  }
  void TearDown() override {
    if (!IsSkipped()) next_run_works();
  }
};

}  // namespace

TEST_F(Sandbox, RunsPythonAndReportsStatus) {
  auto r = py("import sys\nprint(input()[::-1])\nsys.exit(3)", {}, "abc\n");
  EXPECT_EQ(r.status, Status::RuntimeError);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.out, "cba\n");
  auto ok = py("print('ok')");
  EXPECT_EQ(ok.status, Status::Ok);
  EXPECT_GT(ok.wall_ms, 0);
}

TEST_F(Sandbox, NoNetworkConnection) {
  auto r = py("import socket\ns = socket.create_connection(('1.1.1.1', 80), timeout=2)\nprint('CONNECTED')");
  EXPECT_EQ(r.status, Status::RuntimeError) << to_json(r);
  EXPECT_EQ(r.out.find("CONNECTED"), std::string::npos);
  EXPECT_NE(r.err.find("PermissionError"), std::string::npos) << r.err;
}

TEST_F(Sandbox, NoNameResolution) {
  auto r = py("import socket\nprint(socket.getaddrinfo('example.com', 80))");
  EXPECT_EQ(r.status, Status::RuntimeError) << to_json(r);
  EXPECT_NE(r.err.find("gaierror"), std::string::npos) << r.err;
}

TEST_F(Sandbox, CannotWriteOutsideTheWorkingDirectory) {
  std::string n = nonce();
  auto r = py("import os\nok = []\nfor p in ['/etc/" + n + "', '/usr/" + n + "', '/" + n + "', '/work/../" + n +
              "', '/proc/" + n + "']:\n"
              "    try:\n        open(p, 'w').write('x'); ok.append(p)\n    except OSError as e:\n        pass\n"
              "open('/tmp/" + n + "', 'w').write('private tmp')\nprint('WROTE', ok)");
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  EXPECT_NE(r.out.find("WROTE []"), std::string::npos) << r.out;
  for (auto p : {"/etc/", "/usr/", "/", "/tmp/"}) EXPECT_FALSE(host_has(std::string(p) + n)) << p << n;
}

TEST_F(Sandbox, CannotReadSecretsOrOtherHomes) {
  auto r = py("import os\nfor p in ['/etc/shadow', '/root/.bashrc', '/home']:\n"
              "    try:\n        print('READ', p, len(open(p).read()) if not os.path.isdir(p) else os.listdir(p))\n"
              "    except OSError as e:\n        print('DENIED', p, type(e).__name__)\n");
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  EXPECT_NE(r.out.find("DENIED /etc/shadow PermissionError"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("DENIED /root/.bashrc"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("DENIED /home"), std::string::npos) << r.out;
}

TEST_F(Sandbox, ForkBombIsContained) {
  Limits L;
  L.timeout_s = 3;
  auto r = py("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", L);
  EXPECT_TRUE(r.status == Status::Timeout || r.status == Status::RuntimeError) << to_json(r);
  EXPECT_LT(r.wall_ms, 6000);
}

TEST_F(Sandbox, MemoryBombIsStopped) {
  Limits L;
  L.memory_mb = 256;
  auto r = py("x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n", L);
  EXPECT_EQ(r.status, Status::MemoryLimit) << to_json(r);
}

TEST_F(Sandbox, CpuSpinTimesOut) {
  Limits L;
  L.timeout_s = 1;
  auto r = py("while True:\n    pass\n", L);
  EXPECT_EQ(r.status, Status::Timeout) << to_json(r);
  EXPECT_LT(r.wall_ms, 2500);
}

TEST_F(Sandbox, EndlessOutputIsCut) {
  Limits L;
  L.max_output_bytes = 1 << 16;
  auto r = py("while True:\n    print('x' * 1000)\n", L);
  EXPECT_EQ(r.status, Status::OutputLimit) << to_json(r).substr(0, 200);
  EXPECT_LE(r.out.size(), (size_t)1 << 16);
}

TEST_F(Sandbox, CannotSignalOrTraceTheParent) {
  auto r = py("import os, ctypes, signal\n"
              "for pid in [os.getppid(), 1]:\n"
              "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print('kill', pid, type(e).__name__)\n"
              "libc = ctypes.CDLL(None)\n"
              "print('ptrace', libc.ptrace(16, 1, 0, 0), ctypes.get_errno())\n"
              "print('alive')\n");
  // The program runs under the sandbox's init (pid 1 of the namespace), which ignores the kill;
  // the supervisor (this test) is not visible.
  EXPECT_NE(r.out.find("ptrace -1"), std::string::npos) << to_json(r);
  EXPECT_NE(r.out.find("alive"), std::string::npos) << to_json(r);
}

TEST_F(Sandbox, NoBackgroundProcessSurvivesTheRun) {
  std::string marker = nonce();
  auto r = py("import subprocess, sys\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)  # " + marker + "'],"
              " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
              "print('spawned')\n");
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  usleep(200 * 1000);
  EXPECT_EQ(host_processes_with(marker), 0);
}

TEST_F(Sandbox, CannotFillTheDisk) {
  struct statvfs before, after;
  statvfs("/tmp", &before);
  auto r = py("import os\nn = 0\nfor d in ['/work', '/tmp']:\n"
              "    try:\n        with open(d + '/fill', 'wb') as f:\n"
              "            while True:\n                f.write(b'x' * (1 << 20)); f.flush(); n += 1\n"
              "    except OSError as e:\n        print(d, type(e).__name__, e.errno)\nprint('MB', n)\n");
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  statvfs("/tmp", &after);
  double lost_mb = ((double)before.f_bavail - (double)after.f_bavail) * before.f_frsize / (1 << 20);
  EXPECT_LT(lost_mb, 32) << r.out;  // the tmpfs limits, not the host disk
}

TEST_F(Sandbox, CannotRaiseItsLimits) {
  auto r = py("import resource\n"
              "for lim in [resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NPROC]:\n"
              "    try:\n        resource.setrlimit(lim, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)); print('RAISED', lim)\n"
              "    except (OSError, ValueError) as e:\n        print('DENIED', lim)\n");
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  EXPECT_EQ(r.out.find("RAISED"), std::string::npos) << r.out;
}

TEST_F(Sandbox, SymlinksInTheWorkspaceDoNotReachTheHost) {
  Workspace ws;
  ws.write("main.py",
           "import os\nos.symlink('/etc/passwd', 'data.txt')\nos.symlink('/etc/shadow', 'secret.txt')\n"
           "os.mkfifo('pipe')\nos.makedirs('d/e')\nopen('d/e/f', 'w').write('deep')\n"
           "open('result.txt', 'w').write('made here')\nprint(len(open('data.txt').read()) > 0)\n");
  auto r = run({"python3", "-I", "main.py"}, "", Limits{}, ws);
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  // Only regular files at the top of /work come back: links, FIFOs and directories stay behind.
  EXPECT_EQ(ws.read("result.txt"), "made here");
  for (auto name : {"data.txt", "secret.txt", "pipe", "d"}) EXPECT_FALSE(ws.contains(name)) << name;
  EXPECT_THROW(ws.read("secret.txt"), grpo::Error);
  EXPECT_THROW(ws.write("../escape", "x"), grpo::Error);
  std::ifstream f("/etc/passwd");
  std::string passwd((std::istreambuf_iterator<char>(f)), {});
  ws.write("data.txt", "owned");  // the workspace's own file now, not a link to the host's
  auto again = run({"python3", "-I", "-c", "print(open('data.txt').read())"}, "", Limits{}, ws);
  EXPECT_EQ(again.out, "owned\n") << to_json(again);
  std::ifstream g("/etc/passwd");
  std::string after((std::istreambuf_iterator<char>(g)), {});
  EXPECT_EQ(passwd, after);
}

TEST_F(Sandbox, CompilesAndRunsCpp) {
  Workspace ws;
  ws.write("main.cpp", "#include <iostream>\nint main(){int a,b;std::cin>>a>>b;std::cout<<a+b<<\"\\n\";}\n");
  Limits cl;
  cl.timeout_s = 60;
  cl.memory_mb = 2048;
  auto c = run({"g++", "-O1", "-o", "main", "main.cpp"}, "", cl, ws);
  ASSERT_EQ(c.status, Status::Ok) << to_json(c);
  auto r = run({"./main"}, "2 40\n", Limits{}, ws);
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  EXPECT_EQ(r.out, "42\n");
}

TEST_F(Sandbox, ManyArgumentsReachTheProgram) {
  // The run's strings live in the child's plan while it starts; many of them must stay valid.
  std::vector<std::string> argv = {"python3", "-c", "import sys; print(len(sys.argv), sys.argv[-1])"};
  for (int i = 0; i < 200; ++i) argv.push_back("argument-" + std::to_string(i));
  Workspace ws;
  auto r = run(argv, "", Limits{}, ws);
  EXPECT_EQ(r.status, Status::Ok) << to_json(r);
  EXPECT_EQ(r.out, "201 argument-199\n");
}
