"""One hand-written MATH-style example (sympy, three assistant turns)."""
from agents.prompts import InContextExample

EXAMPLES = (
    InContextExample(
        question="Find the sum of the coefficients of x^2 and x in the expansion of (2x - 3)^3.",
        turns=(
            ("Thought: Expand the polynomial with sympy and read off the coefficients.\nAction:\n"
             "from sympy import symbols, expand\nx = symbols('x')\npoly = expand((2*x - 3)**3)\n"
             "print(poly)\nEnd Action", "8*x**3 - 36*x**2 + 54*x - 27\n"),
            ("Thought: The coefficients of x^2 and x are -36 and 54.\nAction:\n"
             "c2 = poly.coeff(x, 2)\nc1 = poly.coeff(x, 1)\nprint(c2 + c1)\nEnd Action", "18\n"),
            ("Answer: 18", "Your answer is correct."),
        )),
)
