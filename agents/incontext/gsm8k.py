"""Eight hand-written GSM8K-style examples (multi-turn CodeAct; some forget to print on purpose,
so the model sees the no-output feedback). Observations match the math sandbox's format."""
from agents.prompts import InContextExample

NO_OUTPUT = "Executed Successfully with No Output, Did you forget to print?\n"
CORRECT = "Your answer is correct."

EXAMPLES = (
    InContextExample(
        question="A bakery sells muffins for $3 each and cookies for $1.50 each. On Monday it sold 24 "
                 "muffins and 40 cookies. How much money did it make on Monday?",
        turns=(
            ("Thought: Multiply each count by its price and add the two amounts.\nAction:\n"
             "muffin_money = 24 * 3\ncookie_money = 40 * 1.50\ntotal = muffin_money + cookie_money\n"
             "End Action", NO_OUTPUT),
            ("Thought: I forgot to print the total.\nAction:\nprint(total)\nEnd Action", "132.0\n"),
            ("Answer: 132", CORRECT),
        )),
    InContextExample(
        question="Tom reads 12 pages on the first day and every following day he reads 3 pages more "
                 "than the day before. How many pages has he read after 5 days?",
        turns=(
            ("Thought: Add up the pages day by day.\nAction:\npages = [12 + 3 * day for day in range(5)]\n"
             "print(pages)\nprint(sum(pages))\nEnd Action", "[12, 15, 18, 21, 24]\n90\n"),
            ("Answer: 90", CORRECT),
        )),
    InContextExample(
        question="A tank holds 600 liters. It is 1/4 full. A pump adds 45 liters per minute. How many "
                 "minutes until the tank is full?",
        turns=(
            ("Thought: Find the missing volume, then divide by the pump rate.\nAction:\n"
             "missing = 600 - 600 / 4\nminutes = missing / 45\nEnd Action", NO_OUTPUT),
            ("Action:\nprint(missing, minutes)\nEnd Action", "450.0 10.0\n"),
            ("Answer: 10", CORRECT),
        )),
    InContextExample(
        question="Maria has 3 times as many stickers as Leo. Together they have 84 stickers. How many "
                 "stickers does Maria have?",
        turns=(
            ("Thought: Leo has x stickers and Maria 3x, so 4x = 84.\nAction:\nleo = 84 / 4\n"
             "maria = 3 * leo\nprint(maria)\nEnd Action", "63.0\n"),
            ("Answer: 63", CORRECT),
        )),
    InContextExample(
        question="A shirt costs $40. It is discounted by 25%, and then a 10% tax is added to the "
                 "discounted price. What is the final price in dollars?",
        turns=(
            ("Thought: Apply the discount, then the tax.\nAction:\nprice = 40 * (1 - 0.25)\n"
             "final = price * 1.10\nprint(final)\nEnd Action", "33.0\n"),
            ("Answer: 33", CORRECT),
        )),
    InContextExample(
        question="A school has 5 classes with 28 students each. Each student needs 3 notebooks, and "
                 "notebooks come in packs of 10. How many packs must the school buy?",
        turns=(
            ("Thought: Count the notebooks and round the packs up.\nAction:\nnotebooks = 5 * 28 * 3\n"
             "packs = math.ceil(notebooks / 10)\nprint(packs)\nEnd Action",
             "Traceback (most recent call last):\n  File \"<stdin>\", line 2, in <module>\n"
             "NameError: name 'math' is not defined\nTraceback (most recent call last):\n"
             "  File \"<stdin>\", line 3, in <module>\nNameError: name 'packs' is not defined\n"),
            ("Thought: I need to import math first.\nAction:\nimport math\n"
             "packs = math.ceil(notebooks / 10)\nprint(notebooks, packs)\nEnd Action", "420 42\n"),
            ("Answer: 42", CORRECT),
        )),
    InContextExample(
        question="Sam walks at 4 km per hour for 90 minutes and then runs at 10 km per hour for 30 "
                 "minutes. How many kilometers does he cover in total?",
        turns=(
            ("Thought: Convert the minutes to hours and add the two distances.\nAction:\n"
             "walk = 4 * 90 / 60\nrun = 10 * 30 / 60\nEnd Action", NO_OUTPUT),
            ("Thought: Print the distances.\nAction:\nprint(walk, run, walk + run)\nEnd Action",
             "6.0 5.0 11.0\n"),
            ("Answer: 11", CORRECT),
        )),
    InContextExample(
        question="A farmer has 17 cows and 23 chickens. How many legs do the animals have altogether?",
        turns=(
            ("Thought: Cows have 4 legs and chickens have 2.\nAction:\nprint(17 * 4 + 23 * 2)\n"
             "End Action", "114\n"),
            ("Answer: 114", CORRECT),
        )),
)
