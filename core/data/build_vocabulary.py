"""Regenerate ``nouns.txt``, the default vocabulary of CLIP cluster labels.

    .venv/bin/python core/data/build_vocabulary.py

Sources, in this order (the first spelling of a word wins, case-insensitively):

1. open_clip's curated ImageNet-1k class names (``open_clip.IMAGENET_CLASSNAMES``, the
   names the CLIP authors wrote for zero-shot ImageNet; MIT licence).
2. torchvision's COCO detection categories (``torchvision.models._meta._COCO_CATEGORIES``).
3. ``GENERIC`` below: CIFAR-100's classes plus broad concrete nouns (scenes, materials,
   kinds of picture) that ImageNet's fine-grained names lack, so a cluster of "cartoons"
   or "flowers" can be called that instead of its nearest dog breed.
"""

from __future__ import annotations

from pathlib import Path

GENERIC = """
apple aquarium fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn mower leopard lion lizard lobster
man maple tree motorcycle mountain mouse mushroom oak tree orange orchid otter palm tree pear pickup truck
pine tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
skyscraper snail snake spider squirrel streetcar sunflower sweet pepper table tank telephone television tiger
tractor train trout tulip turtle wardrobe whale willow tree wolf woman worm
""".split("\n")

# A hand-kept word list, grouped by theme on purpose.
# fmt: off
GENERIC_PHRASES = [
    # broad categories
    "animal", "bird", "fish", "insect", "reptile", "mammal", "dog", "cat", "horse", "cow", "pig", "sheep", "goat",
    "chicken", "duck", "frog", "monkey", "person", "people", "child", "face", "hand", "crowd", "plant", "flower",
    "tree", "leaf", "grass", "fruit", "vegetable", "food", "meal", "dessert", "cake", "bread", "drink", "vehicle",
    "car", "truck", "boat", "ship", "airplane", "aircraft", "spacecraft", "building", "tower", "church", "city",
    "street", "room", "kitchen", "bedroom", "office", "furniture", "tool", "weapon", "toy", "ball", "instrument",
    "musical instrument", "guitar", "piano", "drum", "clothing", "shoe", "hat", "jewelry", "bag", "book",
    "paper", "letter", "number", "symbol", "sign", "flag", "map", "logo", "icon", "emoji", "text", "document",
    "screenshot", "diagram", "chart", "pattern", "texture", "shape", "circle", "square", "triangle", "star",
    "heart", "arrow", "line", "dot", "stripe", "grid", "spiral",
    # scenes and nature
    "sky", "sun", "moon", "planet", "space", "night sky", "rainbow", "snow", "ice", "rain", "water", "river",
    "lake", "ocean", "beach", "desert", "field", "garden", "park", "farm", "jungle", "cave", "volcano", "island",
    "landscape", "sunset", "fire", "smoke", "rock", "stone", "sand", "wood", "metal", "glass", "plastic", "fabric",
    # kinds of picture
    "cartoon", "drawing", "sketch", "painting", "illustration", "clip art", "photograph", "portrait",
    "close-up", "silhouette", "outline", "3D render", "pixel art", "comic", "sticker", "stamp", "badge",
    # holidays and objects common in clip-art sets
    "christmas", "halloween", "pumpkin", "gift", "balloon", "candle", "bell", "crown", "mask", "robot", "alien",
    "monster", "dragon", "unicorn", "ghost", "skull", "angel", "fairy", "knight", "pirate", "cowboy", "clown",
    "computer", "phone", "camera", "television set", "lamp post", "light bulb", "key", "lock", "money", "coin",
    "medal", "trophy", "sports equipment", "bicycle helmet", "kite", "umbrella", "chair", "bench",
]
# fmt: on


def vocabulary() -> list[str]:
    import open_clip
    from torchvision.models import _meta

    words: list[str] = []
    seen: set[str] = set()
    generic = [w for line in GENERIC for w in _cifar_words(line)]
    for word in [*open_clip.IMAGENET_CLASSNAMES, *_meta._COCO_CATEGORIES, *generic, *GENERIC_PHRASES]:
        word = " ".join(word.split())
        if not word or word in ("__background__", "N/A") or word.lower() in seen:
            continue
        seen.add(word.lower())
        words.append(word)
    return words


def _cifar_words(line: str) -> list[str]:
    # CIFAR-100 names with two words ("maple tree", "aquarium fish") are kept whole.
    pairs = {
        "aquarium fish",
        "lawn mower",
        "maple tree",
        "oak tree",
        "palm tree",
        "pickup truck",
        "pine tree",
        "sweet pepper",
        "willow tree",
    }
    tokens, out, i = line.split(), [], 0
    while i < len(tokens):
        two = " ".join(tokens[i : i + 2])
        if two in pairs:
            out.append(two)
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


def main() -> None:
    out = Path(__file__).with_name("nouns.txt")
    words = vocabulary()
    header = (
        "# RepLens default CLIP label vocabulary: ImageNet-1k names (open_clip), COCO categories "
        "(torchvision), CIFAR-100 classes and broad nouns.\n# Regenerate with core/data/build_vocabulary.py; "
        "one word or phrase per line.\n"
    )
    out.write_text(header + "\n".join(words) + "\n", encoding="utf-8")
    print(f"wrote {len(words)} words to {out}")


if __name__ == "__main__":
    main()
