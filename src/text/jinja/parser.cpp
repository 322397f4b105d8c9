#include "text/jinja/parser.h"

#include <algorithm>
#include <set>

#include "text/jinja/lexer.h"
#include "util/error.h"

namespace grpo::text::jinja {
namespace {

class Parser {
 public:
  Parser(std::vector<Chunk> chunks, std::string where) : chunks_(std::move(chunks)), where_(std::move(where)) {}

  Body parse_all() {
    std::string end;
    Body body = parse_body({}, &end);
    return body;
  }

 private:
  std::vector<Chunk> chunks_;
  std::string where_;
  size_t ci_ = 0;
  std::vector<Tok> toks_;
  size_t ti_ = 0;
  int depth_ = 0;  // nesting of blocks and expressions, bounded so that hostile text cannot exhaust the stack

  struct Nest {
    Parser& p;
    Nest(Parser& parser, int line) : p(parser) {
      if (++p.depth_ > 200) p.fail(line, "nested deeper than 200 levels");
    }
    ~Nest() { --p.depth_; }
  };

  [[noreturn]] void fail(int line, const std::string& what) const {
    throw Error(where_ + ": line " + std::to_string(line) + ": " + what);
  }

  const Tok& peek(size_t ahead = 0) const { return toks_[std::min(ti_ + ahead, toks_.size() - 1)]; }
  Tok next() { return toks_[ti_ < toks_.size() - 1 ? ti_++ : ti_]; }
  bool at_op(const char* op) const { return peek().type == Tok::Type::Op && peek().s == op; }
  bool at_name(const char* name) const { return peek().type == Tok::Type::Name && peek().s == name; }
  bool accept_op(const char* op) {
    if (!at_op(op)) return false;
    ++ti_;
    return true;
  }
  bool accept_name(const char* name) {
    if (!at_name(name)) return false;
    ++ti_;
    return true;
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) fail(peek().line, std::string("expected '") + op + "', found " + describe(peek()));
  }
  std::string expect_name() {
    if (peek().type != Tok::Type::Name) fail(peek().line, "expected a name, found " + describe(peek()));
    return next().s;
  }
  void expect_end() {
    if (peek().type != Tok::Type::End) fail(peek().line, "unexpected " + describe(peek()) + " at the end of the tag");
  }
  static std::string describe(const Tok& t) {
    switch (t.type) {
      case Tok::Type::End: return "the end of the tag";
      case Tok::Type::Str: return "a string";
      case Tok::Type::Int:
      case Tok::Type::Float: return "a number";
      default: return "'" + t.s + "'";
    }
  }

  // Statements up to one whose keyword is in `ends` (its tokens are left loaded, past the keyword).
  Body parse_body(const std::set<std::string>& ends, std::string* end) {
    Body body;
    while (ci_ < chunks_.size()) {
      const Chunk& c = chunks_[ci_++];
      if (c.type == Chunk::Type::Text) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Text;
        n->line = c.line;
        n->text = c.body;
        body.push_back(std::move(n));
        continue;
      }
      toks_ = tokenize(c.body, c.line, where_);
      ti_ = 0;
      if (c.type == Chunk::Type::Expr) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Output;
        n->line = c.line;
        n->expr = parse_expression();
        expect_end();
        body.push_back(std::move(n));
        continue;
      }
      if (peek().type != Tok::Type::Name) fail(c.line, "a tag must start with a keyword");
      std::string kw = next().s;
      if (ends.count(kw)) {
        *end = kw;
        return body;
      }
      body.push_back(parse_statement(kw, c.line));
    }
    if (!ends.empty()) {
      std::string names;
      for (const auto& e : ends) names += (names.empty() ? "" : " or ") + e;
      fail(chunks_.empty() ? 1 : chunks_.back().line, "the template ends before " + names);
    }
    return body;
  }

  NodePtr parse_statement(const std::string& kw, int line) {
    Nest nest(*this, line);
    auto n = std::make_unique<Node>();
    n->line = line;
    std::string end;
    if (kw == "if") {
      n->kind = Node::Kind::If;
      n->conditions.push_back(parse_expression());
      expect_end();
      while (true) {
        n->bodies.push_back(parse_body({"elif", "else", "endif"}, &end));
        if (end == "elif") {
          n->conditions.push_back(parse_expression());
          expect_end();
        } else if (end == "else") {
          expect_end();
          n->bodies.push_back(parse_body({"endif"}, &end));
          expect_end();
          break;
        } else {
          expect_end();
          break;
        }
      }
    } else if (kw == "for") {
      n->kind = Node::Kind::For;
      do n->targets.push_back(expect_name());
      while (accept_op(","));
      if (!accept_name("in")) fail(line, "expected 'in' in the for loop");
      n->expr = parse_or();
      if (accept_name("if")) n->filter = parse_or();
      if (at_name("recursive")) fail(line, "recursive for loops are not supported");
      expect_end();
      n->bodies.push_back(parse_body({"else", "endfor"}, &end));
      expect_end();
      if (end == "else") {
        n->bodies.push_back(parse_body({"endfor"}, &end));
        expect_end();
      }
    } else if (kw == "set") {
      n->targets.push_back(expect_name());
      if (accept_op(".")) n->attribute = expect_name();
      while (accept_op(",")) n->targets.push_back(expect_name());
      if (accept_op("=")) {
        n->kind = Node::Kind::Set;
        n->expr = parse_expression();
        if (at_op(",")) {  // set a, b = x, y
          auto tuple = std::make_unique<Expr>();
          tuple->kind = Expr::Kind::ListLit;
          tuple->line = line;
          tuple->items.push_back(std::move(n->expr));
          while (accept_op(",")) tuple->items.push_back(parse_expression());
          n->expr = std::move(tuple);
        }
        expect_end();
      } else {
        if (!n->attribute.empty() || n->targets.size() != 1) fail(line, "a block set takes one name");
        expect_end();
        n->kind = Node::Kind::SetBlock;
        n->bodies.push_back(parse_body({"endset"}, &end));
        expect_end();
      }
    } else if (kw == "macro") {
      n->kind = Node::Kind::Macro;
      n->targets.push_back(expect_name());
      expect_op("(");
      while (!accept_op(")")) {
        n->params.push_back(expect_name());
        n->defaults.push_back(accept_op("=") ? parse_expression() : nullptr);
        if (!at_op(")")) expect_op(",");
      }
      expect_end();
      n->bodies.push_back(parse_body({"endmacro"}, &end));
      if (peek().type == Tok::Type::Name) next();  // {% endmacro name %}
      expect_end();
    } else if (kw == "break" || kw == "continue") {
      n->kind = kw == "break" ? Node::Kind::Break : Node::Kind::Continue;
      expect_end();
    } else if (kw == "generation") {
      n->kind = Node::Kind::Generation;
      expect_end();
      n->bodies.push_back(parse_body({"endgeneration"}, &end));
      expect_end();
    } else {
      fail(line, "the '" + kw + "' tag is not supported in chat templates");
    }
    return n;
  }

  ExprPtr make(Expr::Kind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  ExprPtr parse_expression() {
    Nest nest(*this, peek().line);
    ExprPtr e = parse_or();
    while (at_name("if")) {
      int line = next().line;
      auto c = make(Expr::Kind::Cond, line);
      c->items.push_back(std::move(e));
      c->items.push_back(parse_or());
      c->items.push_back(accept_name("else") ? parse_expression() : nullptr);
      e = std::move(c);
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (at_name("or")) {
      auto o = make(Expr::Kind::Or, next().line);
      o->items.push_back(std::move(e));
      o->items.push_back(parse_and());
      e = std::move(o);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (at_name("and")) {
      auto a = make(Expr::Kind::And, next().line);
      a->items.push_back(std::move(e));
      a->items.push_back(parse_not());
      e = std::move(a);
    }
    return e;
  }

  ExprPtr parse_not() {
    Nest nest(*this, peek().line);
    if (at_name("not")) {
      auto n = make(Expr::Kind::Not, next().line);
      n->items.push_back(parse_not());
      return n;
    }
    return parse_compare();
  }

  ExprPtr binary(std::string op, ExprPtr a, ExprPtr b, int line) {
    auto e = make(Expr::Kind::Binary, line);
    e->name = std::move(op);
    e->items.push_back(std::move(a));
    e->items.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_compare() {
    ExprPtr e = parse_add();
    while (true) {
      int line = peek().line;
      if (peek().type == Tok::Type::Op &&
          (peek().s == "==" || peek().s == "!=" || peek().s == "<" || peek().s == ">" || peek().s == "<=" || peek().s == ">=")) {
        std::string op = next().s;
        e = binary(op, std::move(e), parse_add(), line);
      } else if (accept_name("in")) {
        e = binary("in", std::move(e), parse_add(), line);
      } else if (at_name("not") && peek(1).type == Tok::Type::Name && peek(1).s == "in") {
        ti_ += 2;
        e = binary("not in", std::move(e), parse_add(), line);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_add() {
    ExprPtr e = parse_concat();
    while (at_op("+") || at_op("-")) {
      Tok t = next();
      e = binary(t.s, std::move(e), parse_concat(), t.line);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_mul();
    while (at_op("~")) {
      Tok t = next();
      e = binary("~", std::move(e), parse_mul(), t.line);
    }
    return e;
  }

  ExprPtr parse_mul() {
    ExprPtr e = parse_pow();
    while (at_op("*") || at_op("/") || at_op("//") || at_op("%")) {
      Tok t = next();
      e = binary(t.s, std::move(e), parse_pow(), t.line);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (at_op("**")) {
      Tok t = next();
      e = binary("**", std::move(e), parse_unary(true), t.line);
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    Nest nest(*this, peek().line);
    ExprPtr e;
    if (at_op("-")) {
      e = make(Expr::Kind::Neg, next().line);
      e->items.push_back(parse_unary(false));
    } else if (accept_op("+")) {
      e = parse_unary(false);
    } else {
      e = parse_postfix(parse_primary());
    }
    if (with_filter) e = parse_filters(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    Tok t = next();
    switch (t.type) {
      case Tok::Type::Name: {
        auto lit = make(Expr::Kind::Literal, t.line);
        if (t.s == "true" || t.s == "True") lit->value = Value::boolean(true);
        else if (t.s == "false" || t.s == "False") lit->value = Value::boolean(false);
        else if (t.s == "none" || t.s == "None") lit->value = Value::none();
        else {
          lit->kind = Expr::Kind::Name;
          lit->name = t.s;
        }
        return lit;
      }
      case Tok::Type::Str: {
        std::string s = t.s;
        while (peek().type == Tok::Type::Str) s += next().s;  // adjacent literals join
        auto lit = make(Expr::Kind::Literal, t.line);
        lit->value = Value::string(s);
        return lit;
      }
      case Tok::Type::Int: {
        auto lit = make(Expr::Kind::Literal, t.line);
        lit->value = Value::integer(t.i);
        return lit;
      }
      case Tok::Type::Float: {
        auto lit = make(Expr::Kind::Literal, t.line);
        lit->value = Value::number(t.f);
        return lit;
      }
      case Tok::Type::Op:
        if (t.s == "(") {
          if (accept_op(")")) return make(Expr::Kind::ListLit, t.line);
          ExprPtr e = parse_expression();
          if (at_op(",")) {  // a tuple: a list to the template
            auto tuple = make(Expr::Kind::ListLit, t.line);
            tuple->items.push_back(std::move(e));
            while (accept_op(",") && !at_op(")")) tuple->items.push_back(parse_expression());
            e = std::move(tuple);
          }
          expect_op(")");
          return e;
        }
        if (t.s == "[") {
          auto list = make(Expr::Kind::ListLit, t.line);
          while (!accept_op("]")) {
            list->items.push_back(parse_expression());
            if (!at_op("]")) expect_op(",");
          }
          return list;
        }
        if (t.s == "{") {
          auto dict = make(Expr::Kind::DictLit, t.line);
          while (!accept_op("}")) {
            dict->items.push_back(parse_expression());
            expect_op(":");
            dict->items.push_back(parse_expression());
            if (!at_op("}")) expect_op(",");
          }
          return dict;
        }
        break;
      default: break;
    }
    fail(t.line, "unexpected " + describe(t));
  }

  void parse_call_args(Expr& call) {
    while (!accept_op(")")) {
      if (peek().type == Tok::Type::Name && peek(1).type == Tok::Type::Op && peek(1).s == "=") {
        call.arg_names.push_back(next().s);
        next();
      } else {
        if (!call.arg_names.empty() && !call.arg_names.back().empty())
          fail(peek().line, "a positional argument follows a keyword argument");
        call.arg_names.emplace_back();
      }
      call.items.push_back(parse_expression());
      if (!at_op(")")) expect_op(",");
    }
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      int line = peek().line;
      if (accept_op(".")) {
        if (peek().type == Tok::Type::Int) {  // x.0 is x[0]
          auto idx = make(Expr::Kind::Index, line);
          auto lit = make(Expr::Kind::Literal, line);
          lit->value = Value::integer(next().i);
          idx->items.push_back(std::move(e));
          idx->items.push_back(std::move(lit));
          e = std::move(idx);
          continue;
        }
        auto a = make(Expr::Kind::Attr, line);
        a->name = expect_name();
        a->items.push_back(std::move(e));
        e = std::move(a);
      } else if (accept_op("[")) {
        ExprPtr parts[3];
        bool slice = false;
        for (int k = 0; k < 3; ++k) {
          if (!at_op(":") && !at_op("]")) parts[k] = parse_expression();
          if (k < 2 && accept_op(":")) {
            slice = true;
            continue;
          }
          break;
        }
        expect_op("]");
        if (!slice) {
          if (!parts[0]) fail(line, "empty subscript");
          auto idx = make(Expr::Kind::Index, line);
          idx->items.push_back(std::move(e));
          idx->items.push_back(std::move(parts[0]));
          e = std::move(idx);
        } else {
          auto s = make(Expr::Kind::Slice, line);
          s->items.push_back(std::move(e));
          for (auto& p : parts) s->items.push_back(std::move(p));
          e = std::move(s);
        }
      } else if (accept_op("(")) {
        auto call = make(Expr::Kind::Call, line);
        call->items.push_back(std::move(e));
        parse_call_args(*call);
        e = std::move(call);
      } else {
        return e;
      }
    }
  }

  bool starts_test_argument() const {
    const Tok& t = peek();
    if (t.type == Tok::Type::Str || t.type == Tok::Type::Int || t.type == Tok::Type::Float) return true;
    if (t.type == Tok::Type::Op) return t.s == "[" || t.s == "{";
    if (t.type == Tok::Type::Name)
      return t.s != "else" && t.s != "or" && t.s != "and" && t.s != "is" && t.s != "in" && t.s != "not" && t.s != "if";
    return false;
  }

  ExprPtr parse_filters(ExprPtr e) {
    while (true) {
      int line = peek().line;
      if (accept_op("|")) {
        auto f = make(Expr::Kind::Filter, line);
        f->name = expect_name();
        while (accept_op(".")) f->name += "." + expect_name();
        f->items.push_back(std::move(e));
        if (accept_op("(")) parse_call_args(*f);
        e = std::move(f);
      } else if (accept_name("is")) {
        auto t = make(Expr::Kind::Test, line);
        t->negate = accept_name("not");
        t->name = expect_name();
        t->items.push_back(std::move(e));
        if (accept_op("(")) {
          parse_call_args(*t);
        } else if (starts_test_argument()) {
          t->arg_names.emplace_back();
          t->items.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else if (accept_op("(")) {
        auto call = make(Expr::Kind::Call, line);
        call->items.push_back(std::move(e));
        parse_call_args(*call);
        e = std::move(call);
      } else {
        return e;
      }
    }
  }
};

}  // namespace

Body parse_template(const std::string& source, const std::string& where) {
  Parser p(scan(source, where), where);
  return p.parse_all();
}

}  // namespace grpo::text::jinja
