"""Source of the bundled sample problem set; writes train.jsonl / valid.jsonl / test.jsonl next to itself.

Run ``python -m rlef.common.data.sample_data.build`` after editing a problem here. Expected outputs are produced
by running each reference solution on its inputs (with the interpreter running this script), so they can
never disagree with the solution; tests/common/test_common_data.py re-runs every reference solution on
every test and checks that every incorrect solution fails at least one test.

Records follow the CodeContests Hugging Face schema (name, description, public_tests/private_tests/
generated_tests as {input: [...], output: [...]}, solutions/incorrect_solutions as {language, solution}
with language 3 = PYTHON3, time_limit {seconds, nanos}, memory_limit_bytes, ...), so the CodeContests
loader reads this set as well.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rlef.common.data.codecontests import PYTHON3

HERE = Path(__file__).resolve().parent


def _p(name, statement, input_spec, output_spec, solution, wrong, inputs, public=1):
    return {
        "name": name,
        "statement": statement,
        "input_spec": input_spec,
        "output_spec": output_spec,
        "solution": solution.strip("\n") + "\n",
        "wrong": wrong.strip("\n") + "\n",
        "inputs": inputs,
        "public": public,
    }


PROBLEMS = [
    _p("sum_of_two", "Given two integers a and b, print their sum.", "One line with two integers a and b (-10^9 <= a, b <= 10^9).", "Print a + b.",
       "a, b = map(int, input().split())\nprint(a + b)",
       "a, b = map(int, input().split())\nprint(a - b)",
       ["1 2\n", "5 7\n", "-3 3\n", "1000000000 1000000000\n", "0 -8\n"]),
    _p("reverse_string", "Given a string s, print it reversed.", "One line with a string s of 1 to 100 lowercase letters.", "Print s reversed.",
       "s = input().strip()\nprint(s[::-1])",
       "s = input().strip()\nprint(s)",
       ["hello\n", "abc\n", "racecar\n", "ab\n", "x\n"]),
    _p("count_vowels", "Count the vowels (a, e, i, o, u, in either case) in a line of text.", "One line of text of up to 200 characters.", "Print the number of vowels.",
       "s = input()\nprint(sum(1 for c in s.lower() if c in 'aeiou'))",
       "s = input()\nprint(sum(1 for c in s if c in 'aeiou'))",
       ["hello world\n", "xyz\n", "AEIOU aeiou\n", "Programming Is Fun\n", "rhythm\n"]),
    _p("fizzbuzz", "For each integer i from 1 to n print Fizz if i is divisible by 3, Buzz if by 5, FizzBuzz if by both, otherwise i.", "One integer n (1 <= n <= 100).", "Print n lines.",
       "n = int(input())\nfor i in range(1, n + 1):\n    if i % 15 == 0:\n        print('FizzBuzz')\n    elif i % 3 == 0:\n        print('Fizz')\n    elif i % 5 == 0:\n        print('Buzz')\n    else:\n        print(i)",
       "n = int(input())\nfor i in range(1, n + 1):\n    if i % 3 == 0:\n        print('Fizz')\n    elif i % 5 == 0:\n        print('Buzz')\n    else:\n        print(i)",
       ["5\n", "15\n", "3\n", "16\n", "1\n"]),
    _p("max_of_list", "Given n integers, print the largest.", "The first line has n (1 <= n <= 1000); the second line has n integers.", "Print the maximum.",
       "n = int(input())\na = list(map(int, input().split()))\nprint(max(a))",
       "n = int(input())\na = list(map(int, input().split()))\nprint(a[-1])",
       ["3\n1 5 2\n", "1\n-7\n", "4\n-1 -2 -3 -4\n", "5\n9 9 1 2 3\n", "2\n0 100\n"]),
    _p("gcd", "Print the greatest common divisor of two positive integers a and b.", "One line with a and b (1 <= a, b <= 10^9).", "Print gcd(a, b).",
       "a, b = map(int, input().split())\nwhile b:\n    a, b = b, a % b\nprint(a)",
       "a, b = map(int, input().split())\nprint(min(a, b))",
       ["12 18\n", "7 5\n", "100 10\n", "48 36\n", "17 17\n"]),
    _p("factorial", "Print n! (the product 1 * 2 * ... * n; 0! = 1).", "One integer n (0 <= n <= 20).", "Print n!.",
       "n = int(input())\nr = 1\nfor i in range(2, n + 1):\n    r *= i\nprint(r)",
       "n = int(input())\nr = 1\nfor i in range(2, n):\n    r *= i\nprint(r)",
       ["5\n", "0\n", "1\n", "10\n", "20\n"]),
    _p("is_prime", "Decide whether n is a prime number.", "One integer n (1 <= n <= 10^9).", "Print YES if n is prime, otherwise NO.",
       "n = int(input())\nok = n >= 2\ni = 2\nwhile i * i <= n and ok:\n    if n % i == 0:\n        ok = False\n    i += 1\nprint('YES' if ok else 'NO')",
       "n = int(input())\nok = True\ni = 2\nwhile i * i <= n and ok:\n    if n % i == 0:\n        ok = False\n    i += 1\nprint('YES' if ok else 'NO')",
       ["7\n", "1\n", "12\n", "999999937\n", "2\n"]),
    _p("sum_of_list", "Given n integers, print their sum.", "The first line has n (1 <= n <= 1000); the second line has n integers.", "Print the sum.",
       "n = int(input())\nprint(sum(map(int, input().split())))",
       "n = int(input())\na = list(map(int, input().split()))\nprint(sum(a[:-1]))",
       ["3\n1 2 3\n", "1\n5\n", "4\n-1 1 -1 1\n", "5\n10 20 30 40 50\n"]),
    _p("count_words", "Count the words in a line; words are separated by one or more spaces.", "One line of up to 200 characters.", "Print the number of words.",
       "print(len(input().split()))",
       "print(input().count(' ') + 1)",
       ["hello world\n", "one\n", "a  b   c\n", "the quick brown fox\n"]),
    _p("palindrome", "Decide whether a string reads the same forwards and backwards.", "One line with a string s of 1 to 100 lowercase letters.", "Print YES or NO.",
       "s = input().strip()\nprint('YES' if s == s[::-1] else 'NO')",
       "s = input().strip()\nprint('YES' if s[0] == s[-1] else 'NO')",
       ["abba\n", "abc\n", "a\n", "abca\n", "racecar\n"]),
    _p("fibonacci", "Print the n-th Fibonacci number, where F(0) = 0, F(1) = 1 and F(n) = F(n-1) + F(n-2).", "One integer n (0 <= n <= 90).", "Print F(n).",
       "n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)",
       "n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(b)",
       ["10\n", "0\n", "1\n", "2\n", "90\n"]),
    _p("sort_numbers", "Sort n integers in non-decreasing order.", "The first line has n (1 <= n <= 1000); the second line has n integers.", "Print the sorted integers separated by spaces.",
       "n = int(input())\na = sorted(map(int, input().split()))\nprint(*a)",
       "n = int(input())\na = sorted(map(int, input().split()), reverse=True)\nprint(*a)",
       ["3\n3 1 2\n", "1\n4\n", "5\n5 -1 3 3 0\n", "4\n1 2 3 4\n"]),
    _p("min_and_max", "Given n integers, print the smallest and the largest.", "The first line has n (1 <= n <= 1000); the second line has n integers.", "Print the minimum and the maximum separated by a space.",
       "n = int(input())\na = list(map(int, input().split()))\nprint(min(a), max(a))",
       "n = int(input())\na = list(map(int, input().split()))\nprint(max(a), min(a))",
       ["3\n2 9 4\n", "1\n3\n", "4\n-5 0 5 10\n", "3\n7 7 8\n"]),
    _p("count_even", "Count how many of n integers are even.", "The first line has n (1 <= n <= 1000); the second line has n integers.", "Print the count of even integers.",
       "n = int(input())\nprint(sum(1 for x in map(int, input().split()) if x % 2 == 0))",
       "n = int(input())\nprint(sum(1 for x in map(int, input().split()) if x % 2 == 1))",
       ["4\n1 2 3 4\n", "3\n1 3 5\n", "5\n0 2 4 6 7\n", "1\n-2\n"]),
    _p("digit_sum", "Print the sum of the decimal digits of a non-negative integer n.", "One integer n (0 <= n <= 10^18).", "Print the digit sum.",
       "print(sum(int(c) for c in input().strip()))",
       "print(len(input().strip()))",
       ["123\n", "0\n", "999\n", "1000000000000000000\n", "5\n"]),
    _p("second_largest", "Print the second largest distinct value among n integers; print -1 if all values are equal.", "The first line has n (2 <= n <= 1000); the second line has n integers between 0 and 10^6.", "Print the answer.",
       "n = int(input())\nv = sorted(set(map(int, input().split())))\nprint(v[-2] if len(v) > 1 else -1)",
       "n = int(input())\nv = sorted(map(int, input().split()))\nprint(v[-2])",
       ["4\n1 5 3 5\n", "3\n2 2 2\n", "2\n1 2\n", "5\n10 9 8 10 9\n"]),
    _p("count_uppercase", "Count the upper-case letters in a line of text.", "One line of up to 200 characters.", "Print the number of upper-case letters.",
       "print(sum(1 for c in input() if c.isupper()))",
       "print(sum(1 for c in input() if c.islower()))",
       ["Hello World\n", "abc\n", "ABC def\n", "x Y z W\n"]),
    _p("count_char", "Count how many times the character c occurs in the string s.", "The first line has s (1 to 200 lowercase letters); the second line has one letter c.", "Print the count.",
       "s = input().strip()\nc = input().strip()\nprint(s.count(c))",
       "s = input().strip()\nc = input().strip()\nprint(1 if c in s else 0)",
       ["banana\na\n", "hello\nz\n", "aaaa\na\n", "mississippi\ns\n"]),
    _p("power_mod", "Print a to the power b modulo m.", "One line with a, b, m (0 <= a, b <= 10^18, 1 <= m <= 10^9).", "Print a^b mod m.",
       "a, b, m = map(int, input().split())\nprint(pow(a, b, m))",
       "a, b, m = map(int, input().split())\nprint(pow(a % m, b % m, m))",
       ["2 10 1000\n", "3 0 7\n", "5 3 13\n", "2 100 1000000007\n", "10 20 7\n"]),
    _p("triangle", "Decide whether three lengths form a non-degenerate triangle.", "One line with three positive integers a, b, c (up to 10^9).", "Print YES or NO.",
       "a, b, c = sorted(map(int, input().split()))\nprint('YES' if a + b > c else 'NO')",
       "a, b, c = sorted(map(int, input().split()))\nprint('YES' if a + b >= c else 'NO')",
       ["3 4 5\n", "1 2 3\n", "1 1 1\n", "1 2 10\n", "5 5 9\n"]),
    _p("leap_year", "Decide whether a year is a leap year in the Gregorian calendar.", "One integer y (1 <= y <= 10^5).", "Print YES or NO.",
       "y = int(input())\nprint('YES' if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 'NO')",
       "y = int(input())\nprint('YES' if y % 4 == 0 else 'NO')",
       ["2024\n", "2023\n", "1900\n", "2000\n", "2100\n"]),
    _p("to_binary", "Print the binary representation of a non-negative integer n without leading zeros.", "One integer n (0 <= n <= 10^18).", "Print n in base 2.",
       "print(bin(int(input()))[2:])",
       "print(bin(int(input())))",
       ["5\n", "0\n", "1\n", "255\n", "1024\n"]),
    _p("triangular_number", "Print the sum 1 + 2 + ... + n.", "One integer n (1 <= n <= 10^9).", "Print the sum.",
       "n = int(input())\nprint(n * (n + 1) // 2)",
       "n = int(input())\nprint(n * (n - 1) // 2)",
       ["3\n", "1\n", "100\n", "1000000000\n"]),
    _p("distinct_count", "Count the distinct values among n integers.", "The first line has n (1 <= n <= 1000); the second line has n integers.", "Print the number of distinct values.",
       "n = int(input())\nprint(len(set(input().split())))",
       "n = int(input())\nprint(len(input().split()))",
       ["5\n1 2 2 3 3\n", "1\n7\n", "4\n1 2 3 4\n", "3\n5 5 5\n"]),
    _p("anagram", "Decide whether two words are anagrams of each other.", "Two lines, each with a word of 1 to 100 lowercase letters.", "Print YES or NO.",
       "a = input().strip()\nb = input().strip()\nprint('YES' if sorted(a) == sorted(b) else 'NO')",
       "a = input().strip()\nb = input().strip()\nprint('YES' if set(a) == set(b) else 'NO')",
       ["listen\nsilent\n", "abc\nabd\n", "aab\nabb\n", "a\na\n", "rat\ntar\n"]),
    _p("product_of_list", "Print the product of n integers.", "The first line has n (1 <= n <= 20); the second line has n integers between -100 and 100.", "Print the product.",
       "n = int(input())\nr = 1\nfor x in map(int, input().split()):\n    r *= x\nprint(r)",
       "n = int(input())\nprint(sum(map(int, input().split())))",
       ["3\n2 3 4\n", "1\n-5\n", "4\n1 -1 2 -2\n", "3\n0 5 9\n"]),
    _p("abs_difference", "Print the absolute difference of two integers.", "One line with two integers a and b (-10^9 <= a, b <= 10^9).", "Print |a - b|.",
       "a, b = map(int, input().split())\nprint(abs(a - b))",
       "a, b = map(int, input().split())\nprint(a - b)",
       ["5 3\n", "3 5\n", "-4 4\n", "7 7\n"]),
    _p("longest_word", "Print the longest word of a sentence; if several words are longest, print the first of them.", "One line of words separated by single spaces (up to 200 characters).", "Print the word.",
       "best = ''\nfor w in input().split():\n    if len(w) > len(best):\n        best = w\nprint(best)",
       "best = ''\nfor w in input().split():\n    if len(w) >= len(best):\n        best = w\nprint(best)",
       ["the quick brown fox\n", "a bb cc\n", "hello\n", "abc de fgh\n"]),
    _p("rotate_left", "Rotate a list of n integers to the left by k positions.", "The first line has n and k (1 <= n <= 1000, 0 <= k <= 10^9); the second line has n integers.", "Print the rotated list separated by spaces.",
       "n, k = map(int, input().split())\na = input().split()\nk %= n\nprint(*(a[k:] + a[:k]))",
       "n, k = map(int, input().split())\na = input().split()\nk %= n\nprint(*(a[-k:] + a[:-k]))",
       ["5 2\n1 2 3 4 5\n", "3 0\n1 2 3\n", "4 5\n1 2 3 4\n", "1 7\n9\n", "4 1\n4 3 2 1\n"]),
    _p("row_sums", "Given an n by m matrix of integers, print the sum of each row.", "The first line has n and m (1 <= n, m <= 100); then n lines of m integers.", "Print n lines, the i-th with the sum of row i.",
       "n, m = map(int, input().split())\nfor _ in range(n):\n    print(sum(map(int, input().split())))",
       "n, m = map(int, input().split())\nrows = [list(map(int, input().split())) for _ in range(n)]\nfor j in range(m):\n    print(sum(r[j] for r in rows))",
       ["2 3\n1 2 3\n4 5 6\n", "1 1\n7\n", "3 2\n1 1\n2 2\n3 3\n", "2 2\n-1 1\n5 5\n"]),
    _p("pairs_with_sum", "Count the pairs of positions i < j with a_i + a_j = k.", "The first line has n and k (1 <= n <= 500); the second line has n integers.", "Print the number of pairs.",
       "n, k = map(int, input().split())\na = list(map(int, input().split()))\nprint(sum(1 for i in range(n) for j in range(i + 1, n) if a[i] + a[j] == k))",
       "n, k = map(int, input().split())\na = list(map(int, input().split()))\nprint(sum(1 for i in range(n) for j in range(n) if i != j and a[i] + a[j] == k))",
       ["4 5\n1 4 2 3\n", "3 10\n1 2 3\n", "4 2\n1 1 1 1\n", "1 2\n1\n"]),
    _p("run_length", "Compress a string with run-length encoding: each maximal run of one letter becomes the letter followed by the run length.", "One line with a string of 1 to 200 lowercase letters.", "Print the encoding.",
       "s = input().strip()\nout = []\ni = 0\nwhile i < len(s):\n    j = i\n    while j < len(s) and s[j] == s[i]:\n        j += 1\n    out.append(s[i] + str(j - i))\n    i = j\nprint(''.join(out))",
       "s = input().strip()\nout = []\ni = 0\nwhile i < len(s):\n    j = i\n    while j < len(s) and s[j] == s[i]:\n        j += 1\n    out.append(s[i] + (str(j - i) if j - i > 1 else ''))\n    i = j\nprint(''.join(out))",
       ["aaabcc\n", "abc\n", "zzzz\n", "aabbaa\n"]),
    _p("dedupe", "Remove repeated values from a list, keeping the first occurrence of each, in order.", "The first line has n (1 <= n <= 1000); the second line has n integers.", "Print the remaining values separated by spaces.",
       "n = int(input())\nseen = set()\nout = []\nfor x in input().split():\n    if x not in seen:\n        seen.add(x)\n        out.append(x)\nprint(*out)",
       "n = int(input())\nprint(*sorted(set(map(int, input().split()))))",
       ["5\n3 1 3 2 1\n", "1\n4\n", "4\n1 2 3 4\n", "3\n9 9 9\n"]),
    _p("prefix_sums", "Print the prefix sums of a list: the i-th printed value is a_1 + ... + a_i.", "The first line has n (1 <= n <= 1000); the second line has n integers.", "Print n values separated by spaces.",
       "n = int(input())\ns = 0\nout = []\nfor x in map(int, input().split()):\n    s += x\n    out.append(s)\nprint(*out)",
       "n = int(input())\ns = 0\nout = []\nfor x in map(int, input().split()):\n    out.append(s)\n    s += x\nprint(*out)",
       ["3\n1 2 3\n", "1\n5\n", "4\n-1 1 -1 1\n", "3\n0 0 7\n"]),
    _p("collatz_steps", "Starting from n, repeatedly replace n by n / 2 if it is even and by 3n + 1 if it is odd. Print the number of steps until n becomes 1.", "One integer n (1 <= n <= 10^6).", "Print the number of steps.",
       "n = int(input())\nsteps = 0\nwhile n != 1:\n    n = n // 2 if n % 2 == 0 else 3 * n + 1\n    steps += 1\nprint(steps)",
       "n = int(input())\nsteps = 1\nwhile n != 1:\n    n = n // 2 if n % 2 == 0 else 3 * n + 1\n    steps += 1\nprint(steps)",
       ["6\n", "1\n", "27\n", "2\n", "7\n"]),
]

# Problem order above is the split order: the first 24 train, the next 6 valid, the rest test.
SPLITS = {"train": (0, 24), "valid": (24, 30), "test": (30, None)}
TIME_LIMIT = {"seconds": 2, "nanos": 0}
MEMORY_LIMIT_BYTES = 256 << 20


def _run(solution: str, stdin: str) -> str:
    done = subprocess.run([sys.executable, "-c", solution], input=stdin, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"reference solution failed on {stdin!r}: {done.stderr}")
    return done.stdout


def _description(p: dict) -> str:
    return f"{p['statement']}\n\nInput\n\n{p['input_spec']}\n\nOutput\n\n{p['output_spec']}"


def record(p: dict) -> dict:
    outputs = [_run(p["solution"], i) for i in p["inputs"]]
    k = p["public"]
    return {
        "name": p["name"],
        "description": _description(p),
        "public_tests": {"input": p["inputs"][:k], "output": outputs[:k]},
        "private_tests": {"input": p["inputs"][k:], "output": outputs[k:]},
        "generated_tests": {"input": [], "output": []},
        "source": 0,
        "difficulty": 1,
        "solutions": {"language": [PYTHON3], "solution": [p["solution"]]},
        "incorrect_solutions": {"language": [PYTHON3], "solution": [p["wrong"]]},
        "cf_contest_id": 0,
        "cf_index": "",
        "cf_points": 0.0,
        "cf_rating": 800,
        "cf_tags": [],
        "is_description_translated": False,
        "untranslated_description": "",
        "time_limit": TIME_LIMIT,
        "memory_limit_bytes": MEMORY_LIMIT_BYTES,
        "input_file": "",
        "output_file": "",
    }


def main() -> None:
    names = [p["name"] for p in PROBLEMS]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate problem names")
    for split, (lo, hi) in SPLITS.items():
        rows = [record(p) for p in PROBLEMS[lo:hi]]
        with open(HERE / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        print(f"{split}: {len(rows)} problems")


if __name__ == "__main__":
    main()
