// The MATH benchmark's string normalisation, as hendrycks/math's `_strip_string` does it.
#include <algorithm>
#include <string>

#include "rewards/math/checker.h"
#include "rewards/math/scan.h"

namespace grpo::rewards {

using namespace math;

std::string hendrycks_normalize(const std::string& in) {
  std::string s = in;
  auto replace_all = [&](const std::string& from, const std::string& to) {
    size_t p = 0;
    while ((p = s.find(from, p)) != std::string::npos) {
      s.replace(p, from.size(), to);
      p += to.size();
    }
  };
  replace_all("\n", "");
  replace_all("\\!", "");
  replace_all("\\\\", "\\");
  replace_all("tfrac", "frac");
  replace_all("dfrac", "frac");
  replace_all("\\left", "");
  replace_all("\\right", "");
  replace_all("^{\\circ}", "");
  replace_all("^\\circ", "");
  replace_all("\\$", "");
  // units: "\text{ " to the end
  {
    size_t p = s.find("\\text{ ");
    if (p != std::string::npos) s = s.substr(0, p);
  }
  replace_all("\\%", "");
  replace_all("%", "");
  replace_all(" .", " 0.");
  replace_all("{.", "{0.");
  if (s.empty()) return s;
  if (s[0] == '.') s = "0" + s;
  // "k = ..." with a short left side
  {
    size_t p = s.find('=');
    if (p != std::string::npos && s.find('=', p + 1) == std::string::npos && p <= 2) s = s.substr(p + 1);
  }
  // \sqrt3 -> \sqrt{3}
  {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      out += s[i];
      if (at(s, i, "\\sqrt") && i + 5 < s.size() && s[i + 5] != '{') {
        out += "sqrt{";
        out += s[i + 5];
        out += "}";
        i += 5;
      }
    }
    s = out;
  }
  replace_all(" ", "");
  // \frac12 -> \frac{1}{2}
  {
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
      if (at(s, i, "\\frac")) {
        out += "\\frac";
        i += 5;
        for (int arg = 0; arg < 2 && i < s.size(); ++arg) {
          if (s[i] == '{') {
            size_t e = close_brace(s, i);
            if (e == std::string::npos) e = s.size() - 1;
            out += s.substr(i, e - i + 1);
            i = e + 1;
          } else {
            out += "{";
            out += s[i];
            out += "}";
            ++i;
          }
        }
        continue;
      }
      out += s[i++];
    }
    s = out;
  }
  if (s == "0.5") s = "\\frac{1}{2}";
  // a/b with integers -> \frac{a}{b}
  {
    size_t p = s.find('/');
    if (p != std::string::npos && s.find('/', p + 1) == std::string::npos) {
      std::string a = s.substr(0, p), bb = s.substr(p + 1);
      if (!a.empty() && !bb.empty() && std::all_of(a.begin(), a.end(), is_digit) && std::all_of(bb.begin(), bb.end(), is_digit))
        s = "\\frac{" + a + "}{" + bb + "}";
    }
  }
  return s;
}

}  // namespace grpo::rewards
