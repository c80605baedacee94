/* Lua 5.4: an embedded benchmark script (recursion, tables, strings, closures)
 * run by the interpreter; bench(n) returns an integer checksum. */
#include <stdint.h>
#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

static const char script[] =
    "local function fib(n) if n < 2 then return n end return fib(n-1) + fib(n-2) end\n"
    "local function tables(n)\n"
    "  local t = {}\n"
    "  for i = 1, n do t[i] = (i * 7919) % 10007 end\n"
    "  table.sort(t)\n"
    "  local m = {}\n"
    "  for i = 1, n do local k = 'k' .. (t[i] % 997); m[k] = (m[k] or 0) + i end\n"
    "  local s = 0\n"
    "  for i = 0, 996 do s = s + (m['k' .. i] or 0) * i end\n"
    "  for i = n, 1, -2 do table.remove(t, i) end\n"
    "  return s + #t + t[#t // 2 + 1]\n"
    "end\n"
    "local function strings(n)\n"
    "  local parts = {}\n"
    "  for i = 1, n do parts[#parts + 1] = string.format('%d:%x;', i, i * 31) end\n"
    "  local s = table.concat(parts)\n"
    "  local count = 0\n"
    "  for a, b in s:gmatch('(%d+):(%x+);') do count = count + #a + #b end\n"
    "  local r = s:gsub('%d', function(d) return string.char(97 + tonumber(d)) end)\n"
    "  return count + #r + (r:find('jjj', 1, true) or 0) + #s:upper():rep(2)\n"
    "end\n"
    "local function closures(n)\n"
    "  local fs = {}\n"
    "  for i = 1, 64 do fs[i] = function(x) return (x * i + 1) % 1000003 end end\n"
    "  local x = 1\n"
    "  for i = 1, n do x = fs[(x % 64) + 1](x) end\n"
    "  return x\n"
    "end\n"
    "function bench(n)\n"
    "  local h = 0\n"
    "  for r = 1, n do\n"
    "    h = (h * 31 + fib(20)) & 0xffffffffffff\n"
    "    h = (h * 31 + tables(4000)) & 0xffffffffffff\n"
    "    h = (h * 31 + strings(2000)) & 0xffffffffffff\n"
    "    h = (h * 31 + closures(50000)) & 0xffffffffffff\n"
    "  end\n"
    "  return h\n"
    "end\n";

static lua_State *L;
static long reps;

int workload_init(long scale)
{
    L = luaL_newstate();
    if (!L)
        return -1;
    luaL_openlibs(L);
    if (luaL_dostring(L, script) != LUA_OK)
        return -1;
    reps = scale;
    return 0;
}

unsigned long long workload_run(void)
{
    lua_getglobal(L, "bench");
    lua_pushinteger(L, reps);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        lua_pop(L, 1);
        return 0;
    }
    unsigned long long h = (unsigned long long)lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_gc(L, LUA_GCCOLLECT);
    return h;
}
