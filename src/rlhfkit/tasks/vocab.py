"""Fixed word lists the task families draw from.

Small on purpose: a tiny GPT-2 with a ~1k BPE vocabulary must learn every family in about a
minute. Topics carry no sentiment of their own under VADER (checked when the list was made), so a
sentence's sentiment comes from what the model says, not from the topic it repeats.
"""

# topic -> the form of "to be" it takes, so references read grammatically ("cats are", "music is").
TOPICS: dict[str, str] = {
    **dict.fromkeys(
        "cats dogs birds flowers trees books teachers mountains rivers stars cookies gardens bicycles"
        " trains puppies kittens parks songs movies boats clouds horses neighbors libraries museums"
        " bees owls candles shoes".split(),
        "are",
    ),
    **dict.fromkeys(
        "music summer winter spring autumn coffee tea chocolate bread rain snow art dancing cooking"
        " reading swimming soup pizza breakfast history school".split(),
        "is",
    ),
    **dict.fromkeys(
        ("the " + t for t in "sea moon sun beach forest city ocean weekend morning".split()),
        "is",
    ),
}

REPEAT_WORDS: tuple[str, ...] = tuple(
    "apple blue hello sun tree happy yes water star cat dog red moon rain book fish bird green"
    " house cake music light stone river snow milk chair door bell ball".split()
)

CATEGORIES: dict[str, tuple[str, ...]] = {
    category: tuple(items.split())
    for category, items in {
        "colors": "red blue green yellow orange purple pink brown black white gray",
        "animals": "cat dog horse cow lion tiger bear rabbit mouse sheep goat fox",
        "fruits": "apple banana orange pear grape cherry lemon mango peach plum melon",
        "vegetables": "carrot potato onion pea bean corn cabbage pepper lettuce leek",
        "drinks": "water milk tea coffee juice soda lemonade cocoa",
        "sports": "soccer tennis golf hockey rugby baseball basketball cricket boxing",
        "instruments": "piano guitar violin drum flute trumpet harp cello",
        "birds": "eagle owl robin crow duck swan parrot pigeon sparrow",
    }.items()
}
