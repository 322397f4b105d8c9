// The Python harness that runs a completion against function-call tests (HumanEval's check(),
// MBPP's asserts) inside the sandbox, written so that a test passes only when the harness itself
// says so, after the assertions ran:
//   - the pass record is a nonce the harness reads from stdin before the completion runs (and then
//     points stdin at /dev/null), printed as the last line after the tests: exiting early
//     (sys.exit, os._exit, exit(), SystemExit, a signal) never passes, whatever the exit status;
//   - the completion runs in its own namespace; before the tests, the builtins and the math module
//     it may have patched are restored, and its names that shadow builtins are not visible to the
//     tests (no `abs = lambda x: 0`, no `set = ...`) unless the name is the function under test;
//   - every function the completion defines returns only plain values (numbers, strings, bytes,
//     None, and the builtin and collections containers of them), so an object whose __eq__ always
//     says True fails;
//   - the test code is the harness's, read from its own files before the completion runs.
// What stays possible: a program that digs the nonce out of the harness's memory (frames, gc).
#pragma once

#include <string>

namespace grpo::rewards {

// main.py; the completion goes in solution.py, the test code in test.py, MBPP's setup code in
// setup.py, and HumanEval's entry point in entry.txt (empty for an MBPP assert). Only cheap modules
// are imported: the harness's start-up is part of every test's cost.
inline const char* code_harness() {
  return R"PY(import builtins, collections, math, os, sys
_nonce = sys.stdin.readline().strip()
_null = os.open('/dev/null', os.O_RDONLY)
os.dup2(_null, 0)


def _read(name):
    with open(name) as f:
        return f.read()


_test = {'test': _read('test.py'), 'setup': _read('setup.py'), 'entry_point': _read('entry.txt').strip()}
_test['mode'] = 'humaneval' if _test['entry_point'] else 'mbpp'
_solution = _read('solution.py')
_builtins = dict(builtins.__dict__)
_math = dict(math.__dict__)
_PLAIN = (int, float, complex, str, bytes, bool, type(None), list, tuple, dict, set, frozenset,
          collections.Counter, collections.defaultdict, collections.OrderedDict, collections.deque)


def _plain(v, depth=0):
    t = type(v)
    if t not in _PLAIN or depth > 50:
        return False
    if t in (list, tuple, set, frozenset, collections.deque):
        return all(_plain(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(_plain(k, depth + 1) and _plain(x, depth + 1) for k, x in v.items())
    return True


def _guard(f):
    def guarded(*args, **kwargs):
        r = f(*args, **kwargs)
        if not _plain(r):
            raise AssertionError('returned a %s, not a plain value' % type(r).__name__)
        return r
    guarded.__name__ = getattr(f, '__name__', 'candidate')
    return guarded


# Names called in `code`: an identifier followed (after spaces) by '('.
def _called(code):
    out, i, n = [], 0, len(code)
    while i < n:
        c = code[i]
        if c.isalpha() or c == '_':
            j = i
            while j < n and (code[j].isalnum() or code[j] == '_'):
                j += 1
            k = j
            while k < n and code[k] in ' \t':
                k += 1
            if k < n and code[k] == '(' and (i == 0 or not (code[i - 1].isalnum() or code[i - 1] in '_.')):
                out.append(code[i:j])
            i = j
        else:
            i += 1
    return out


# The function under test: HumanEval names it; for an MBPP assert, the first function it calls that
# is not a builtin's name (`set(similar_elements(...))`), else the first it calls (`sum(10, 15)`).
def _entry(test, ns):
    if test['mode'] == 'humaneval':
        return test['entry_point']
    called = [n for n in _called(test['test']) if n in ns]
    named = [n for n in called if n not in _builtins]
    return (named or called or [None])[0]


def _main(test, solution, nonce):
    ns = {'__name__': '__main__', '__builtins__': builtins}
    exec(compile(solution, 'solution.py', 'exec'), ns)
    builtins.__dict__.clear()
    builtins.__dict__.update(_builtins)
    math.__dict__.clear()
    math.__dict__.update(_math)
    entry = _entry(test, ns)
    env = {'__name__': '__main__', '__builtins__': builtins}
    for k, v in ns.items():
        if k.startswith('__') or (k in _builtins and k != entry):
            continue
        env[k] = _guard(v) if type(v) is type(_plain) else v
    if test['mode'] == 'humaneval':
        exec(compile(test['test'], 'test.py', 'exec'), env)
        env['check'](env[test['entry_point']])
    else:
        exec(compile(test['setup'], 'setup.py', 'exec'), env)
        exec(compile(test['test'], 'test.py', 'exec'), env)
    sys.stdout.flush()
    os.write(1, ('\n' + nonce + ' PASSED\n').encode())


_main(_test, _solution, _nonce)
)PY";
}

}  // namespace grpo::rewards
