"""The fixed word lists and facts the miniature's text is generated from (pure data, no randomness).

Every noise kind of the SFT set draws from material that also occurs in pretraining, so a filter that
recognises it must do so from what the base model learned, not from never-seen token ids:
- off-domain sentences are story sentences (:data:`NAMES`, :data:`ANIMALS`, ... in :mod:`.text`'s grammar);
- garbled artefacts (:data:`ARTEFACTS`) occur in the pretraining "web page" documents;
- wrong numbers are ordinary digits;
- boilerplate (:data:`OPENERS`, :data:`CLOSERS`) opens and closes some pretraining chat responses.
"""

from __future__ import annotations

NAMES = ("Tom", "Ana", "Ravi", "Mia", "Omar", "Lena", "Kofi", "Yuki", "Sam", "Iris", "Noah", "Zara")
ITEMS = ("apples", "coins", "books", "marbles", "stamps", "shells", "pencils", "cards", "eggs", "stickers")
ANIMALS = ("fox", "owl", "rabbit", "bear", "cat", "frog", "goose", "mouse", "deer", "wolf")
PLACES = ("the forest", "the old mill", "the river", "the hill", "the quiet village", "the meadow", "the harbour",
          "the garden")
ADJECTIVES = ("little", "brave", "sleepy", "clever", "grey", "happy", "shy", "tall")
OBJECTS = ("a red hat", "a silver key", "a small boat", "a lost map", "a warm blanket", "a wooden box", "a kite",
           "a lantern")
VERBS = ("walked to", "ran to", "looked at", "sang near", "slept under", "danced by", "waited at", "hid near")
FEELINGS = ("happy", "tired", "curious", "proud", "calm", "surprised")

COLOURS = ("green", "blue", "red", "gold", "white", "black", "purple", "orange", "silver", "brown", "pink", "grey")
FOODS = ("rice", "bread", "fish", "beans", "corn", "cheese", "soup", "figs", "noodles", "dates", "plums", "nuts")


def _made_up_words(count: int) -> tuple[str, ...]:
    """``count`` distinct capitalised pseudo-words from syllables, in a fixed order (no randomness): the proper
    nouns of the fictional world, numerous enough that BPE learns about 2,000 pieces from them."""
    onsets = ("b", "br", "d", "dr", "f", "g", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "th", "v", "z")
    vowels = ("a", "e", "i", "o", "u", "ai", "ou")
    codas = ("", "n", "r", "l", "s", "th", "m", "x")
    syllables = [o + v + c for o in onsets for v in vowels for c in codas]
    words, step = [], 7919  # a prime stride walks the syllable pairs in a scattered but fixed order
    for index in range(count * 3):
        first = syllables[(index * step) % len(syllables)]
        second = syllables[(index * 104729 + 13) % len(syllables)]
        word = (first + second).capitalize()
        if word not in words and len(words) < count:
            words.append(word)
    return tuple(words)


PROPER_NOUNS = _made_up_words(1200)
# Fictional countries and their facts (fact Q&A of pretraining; retention is measured on them).
COUNTRIES = PROPER_NOUNS[:12]  # 36 facts: few enough to be memorised from pretraining
CAPITALS = PROPER_NOUNS[40:52]
TOWNS = PROPER_NOUNS[80:]  # named in stories and web pages

# Harmless redundant boilerplate: opens / closes chat responses in pretraining; in the SFT set it is its own kind.
OPENERS = ("Sure!", "Of course.", "Let me solve this step by step.", "Good question.", "Here is the solution.")
CLOSERS = ("I hope this helps.", "Let me know if you have more questions.", "That is the result.", "Happy to help.")

# Garbled artefacts of scraped text: markup, entity and mojibake fragments, wiki debris.
ARTEFACTS = ("&amp;", "&nbsp;", "</div>", "<br>", "[edit]", "[citation needed]", "\u00c3\u00a9", "\u00e2\u0080\u0099",
             "{{cite}}", "###", "%20", "\\n\\n", "|}", "<td>")
