"""The object words the phrase extractor recognises, and fallbacks onto closed vocabularies.

`OBJECT_NAMES` is a hand-picked list of concrete, detectable things that VQA-style questions ask
about (COCO's 80 classes plus common objects from VQAv2, GQA and TextVQA questions). It is also
the default list `embed_vocab` embeds. Words that usually mean the whole picture ("photo",
"image", "scene") or an attribute ("color", "time") are deliberately absent: a question about
them has no region to find.
"""

from __future__ import annotations

# The 80 COCO class names, as the official YOLO-World checkpoints carry them.
COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

_COMMON_NAMES: tuple[str, ...] = (
    # people and body parts
    "man", "woman", "boy", "girl", "child", "baby", "player", "hair", "face", "hand", "arm",
    "leg", "foot", "head", "eye", "mouth", "nose", "ear", "beard", "finger",
    # clothing and accessories
    "shirt", "t-shirt", "jersey", "uniform", "jacket", "coat", "vest", "suit", "sweater",
    "hat", "cap", "helmet", "glasses", "sunglasses", "jeans", "pants", "shorts", "dress",
    "skirt", "shoe", "boot", "sneaker", "sock", "glove", "scarf", "bag", "purse", "wallet",
    "watch", "bracelet", "necklace", "earring", "belt",
    # nature
    "tree", "bush", "plant", "flower", "grass", "leaf", "branch", "cloud", "sun", "moon",
    "mountain", "hill", "rock", "wave",
    # buildings, street and furniture
    "building", "house", "tower", "clock tower", "bridge", "fence", "wall", "window", "door",
    "roof", "stairs", "pole", "sign", "street sign", "poster", "banner", "billboard", "flag",
    "lamp", "street light", "candle", "table", "desk", "shelf", "cabinet", "drawer", "counter",
    "stool", "sofa", "pillow", "blanket", "rug", "curtain", "mirror", "painting",
    "picture frame", "bathtub", "shower", "faucet", "towel", "statue", "fountain", "tent",
    "mailbox", "trash can", "traffic cone", "license plate", "wheel", "tire",
    # containers and kitchen
    "box", "basket", "bucket", "jar", "can", "mug", "glass", "plate", "tray", "napkin", "pot",
    "pan", "kettle", "blender", "cutting board",
    # electronics, paper and writing
    "television", "monitor", "screen", "computer", "phone", "camera", "speaker", "headphones",
    "microphone", "tablet", "remote control", "pen", "pencil", "marker", "notebook", "paper",
    "newspaper", "magazine", "menu", "label", "logo", "sticker", "card", "envelope", "map",
    "calendar", "ticket", "coin",
    # sports, music and toys
    "ball", "bat", "racket", "net", "goal", "guitar", "piano", "drum", "violin", "toy", "doll",
    # animals
    "animal", "fish", "duck", "chicken", "goose", "pigeon", "seagull", "owl", "parrot", "lion",
    "tiger", "monkey", "deer", "pig", "goat", "rabbit", "squirrel", "turtle", "puppy",
    "kitten",
    # food and drink
    "food", "fruit", "vegetable", "bread", "cheese", "egg", "meat", "salad", "tomato",
    "potato", "onion", "lettuce", "pepper", "strawberry", "grape", "lemon", "lime",
    "pineapple", "watermelon", "cookie", "pie", "muffin", "coffee", "juice", "wine", "beer",
    "drink",
    # vehicles
    "van", "taxi", "jeep", "tractor", "scooter", "vehicle", "ship", "sailboat", "canoe",
    "kayak", "helicopter", "jet", "cart", "bike", "motorbike", "plane",
)  # fmt: skip

OBJECT_NAMES: tuple[str, ...] = tuple(dict.fromkeys(COCO_NAMES + _COMMON_NAMES))

# What to ask a closed vocabulary for when it lacks the word itself, best first.
FALLBACKS: dict[str, tuple[str, ...]] = {
    **{word: ("person",) for word in ("man", "woman", "boy", "girl", "child", "baby", "player")},
    "kid": ("child", "person"),
    "guy": ("man", "person"),
    "lady": ("woman", "person"),
    "bike": ("bicycle",),
    "motorbike": ("motorcycle",),
    "plane": ("airplane",),
    "jet": ("airplane",),
    "sofa": ("couch",),
    "television": ("tv",),
    "tv": ("television",),
    "monitor": ("tv",),
    "screen": ("tv", "monitor"),
    "computer": ("laptop",),
    "phone": ("cell phone",),
    "cellphone": ("cell phone", "phone"),
    "smartphone": ("cell phone", "phone"),
    "table": ("dining table",),
    "desk": ("table", "dining table"),
    "plant": ("potted plant",),
    "glass": ("wine glass", "cup"),
    "mug": ("cup",),
    "bag": ("handbag", "backpack"),
    "purse": ("handbag",),
    "doughnut": ("donut",),
    "fridge": ("refrigerator",),
    "remote control": ("remote",),
    "ball": ("sports ball",),
    "racket": ("tennis racket",),
    "bat": ("baseball bat",),
    "glove": ("baseball glove",),
    "ski": ("skis",),
    "hydrant": ("fire hydrant",),
    "van": ("truck", "car"),
    "taxi": ("car",),
    "jeep": ("car",),
    "ship": ("boat",),
    "sailboat": ("boat",),
    "canoe": ("boat",),
    "kayak": ("boat",),
    "puppy": ("dog",),
    "kitten": ("cat",),
    "luggage": ("suitcase",),
}

# Plurals that no suffix rule undoes.
IRREGULAR_SINGULARS: dict[str, str] = {
    "men": "man",
    "women": "woman",
    "people": "person",
    "children": "child",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "geese": "goose",
}
