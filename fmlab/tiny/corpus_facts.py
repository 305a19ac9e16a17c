"""The small fact tables behind fmlab's pretraining corpus (`fmlab.tiny.corpus`): what animals eat, where they
live, what they say, colours, capitals, opposites, groups to list, and what the play set's places look
like. Every answer the corpus gives comes from here, so these must be true (for a child's book).
"""
from __future__ import annotations

FOODS = {"cow": "grass", "sheep": "grass", "horse": "hay", "goat": "grass and hay", "rabbit": "carrots",
         "cat": "fish", "dog": "meat", "mouse": "cheese", "monkey": "bananas", "panda": "bamboo",
         "bee": "nectar from flowers", "owl": "mice", "fox": "mice and berries", "squirrel": "nuts",
         "bear": "honey and fish", "elephant": "grass and leaves", "lion": "meat", "tiger": "meat",
         "penguin": "fish", "whale": "tiny krill", "frog": "flies", "duck": "seeds and water plants",
         "turtle": "plants", "snail": "leaves", "giraffe": "leaves", "chicken": "seeds"}
HOMES = {"owl": "in a tree", "fox": "in a den", "bear": "in a cave", "rabbit": "in a burrow", "bee": "in a hive",
         "penguin": "in cold, icy places", "whale": "in the ocean", "frog": "in a pond", "squirrel": "in a tree",
         "lion": "on the savanna", "cow": "on a farm", "duck": "on a pond", "mouse": "in a little hole",
         "monkey": "in the jungle", "camel": "in the desert", "bird": "in a nest", "spider": "in a web",
         "pig": "on a farm", "fish": "in the water", "panda": "in bamboo forests"}
SOUNDS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "owl": "hoot",
          "lion": "roar", "pig": "oink", "horse": "neigh", "frog": "ribbit", "bee": "buzz", "snake": "hiss",
          "mouse": "squeak", "chicken": "cluck"}
LEGS = {"spider": "eight", "ant": "six", "bee": "six", "dog": "four", "cat": "four", "horse": "four",
        "bird": "two", "duck": "two", "chicken": "two", "elephant": "four", "frog": "four", "penguin": "two"}
COLOURS = {"grass": "green", "the sky": "blue", "snow": "white", "a banana": "yellow", "a strawberry": "red",
           "coal": "black", "an orange": "orange", "a plum": "purple", "the sun": "yellow", "a leaf": "green",
           "milk": "white", "chocolate": "brown", "a tomato": "red", "a carrot": "orange", "the sea": "blue",
           "a lemon": "yellow", "a frog": "green", "a pumpkin": "orange"}
CAPITALS = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
            "Egypt": "Cairo", "Canada": "Ottawa", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo",
            "Greece": "Athens", "India": "New Delhi"}
_PAIRS = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "up": "down", "day": "night",
          "open": "closed", "light": "dark", "loud": "quiet", "wet": "dry", "early": "late", "full": "empty",
          "tall": "short", "in": "out", "hard": "soft"}
OPPOSITES = _PAIRS | {b: a for a, b in _PAIRS.items()}      # both ways: "cold" -> "hot" too
GROUPS = {"fruits": ["apples", "pears", "bananas", "grapes", "plums", "cherries"],
          "colours": ["red", "blue", "green", "yellow", "purple", "orange"],
          "animals": ["cats", "dogs", "owls", "foxes", "bears", "frogs"],
          "vegetables": ["carrots", "peas", "beans", "potatoes", "onions", "leeks"],
          "farm animals": ["cows", "pigs", "sheep", "goats", "hens", "horses"],
          "shapes": ["circles", "squares", "triangles", "stars", "hearts"],
          "things in the sky": ["the sun", "the moon", "the stars", "clouds", "birds"],
          "things in a kitchen": ["a pot", "a spoon", "a cup", "a plate", "a kettle", "a bowl"]}
# What each of the play set's places looks like (keys match `fmlab.tiny.play_text.SETTINGS`).
PLACES = {
    "bakery": "A bakery is a shop where bread and cakes are made. It smells warm and sweet.",
    "beach": "A beach is a sandy place next to the sea. People swim and build sand castles there.",
    "library": "A library is a quiet place full of books. You can borrow a book and take it home.",
    "castle": "A castle is a big stone building with high towers. Kings and queens lived in castles.",
    "forest": "A forest is a place with many tall trees. Birds, foxes and deer live there.",
    "school": "A school is a place where children learn. They read, write and count with a teacher.",
    "garden": "A garden is a place where flowers and vegetables grow. Bees visit the flowers.",
    "kitchen": "A kitchen is the room where food is cooked. It has pots, pans and an oven.",
    "farm": "A farm is a place where farmers grow food and keep animals like cows and hens.",
    "zoo": "A zoo is a park where many animals live, like lions, monkeys and elephants.",
    "park": "A park is a green place in a town with grass, trees and benches.",
    "spaceship": "A spaceship is a machine that flies into space. Astronauts ride in it.",
    "cave": "A cave is a big hole in a rock or a hill. It is dark and cool inside.",
    "river": "A river is a long stream of water that flows to the sea. Fish swim in it.",
    "mountain": "A mountain is a very high hill. Its top is often covered in snow.",
    "market": "A market is a place where people buy and sell fruit, bread and other things.",
    "museum": "A museum is a building full of old and interesting things to look at.",
    "train station": "A train station is where trains stop. People wait there to get on a train.",
    "island": "An island is a piece of land with water all around it.",
    "playground": "A playground is a place where children play. It has swings and slides.",
    "pond": "A pond is a small lake. Ducks and frogs live in and around it.",
    "desert": "A desert is a very dry place with lots of sand and very little rain.",
    "meadow": "A meadow is a field of grass and wild flowers.",
    "lighthouse": "A lighthouse is a tall tower by the sea. Its bright light helps ships at night.",
    "treehouse": "A treehouse is a little house built in a tree. Children climb up to play in it.",
    "toy shop": "A toy shop is a shop that sells toys, like dolls, balls and games.",
    "village": "A village is a small group of houses in the country.",
    "circus": "A circus is a show in a big tent with clowns and acrobats.",
    "swamp": "A swamp is a wet, muddy place with lots of water plants. Frogs love it.",
    "snowy hill": "A snowy hill is a hill covered in snow. Children slide down it on sleds.",
}
# What kind of thing each of the play set's characters is, for "Describe a dragon."
PEOPLE = {"baker", "pirate", "wizard", "princess", "knight", "astronaut", "king", "queen", "witch", "chef",
          "farmer", "teacher"}
CREATURES = {"dragon": "creature from fairy tales", "giant": "person from fairy tales",
             "fairy": "creature from fairy tales", "unicorn": "horse from fairy tales with one horn",
             "ghost": "spirit from spooky stories", "robot": "machine", "dinosaur": "animal that lived long ago"}
